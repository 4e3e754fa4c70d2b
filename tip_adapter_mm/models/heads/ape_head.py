"""APE: Tip-Adapter's cache with refined channels and value weights."""
from collections import OrderedDict
from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from mmpretrain.registry import MODELS
from .tip_adapter_head import TipAdapterHead, linear_grid


def select_channels(zero_shot_weights: torch.Tensor,
                    cache_keys: torch.Tensor, cache_values: torch.Tensor,
                    feat_num: int,
                    criterion_weights: Sequence[float] = (0.7, 0.3)
                    ) -> torch.Tensor:
    """APE's prior refinement: the ``feat_num`` most discriminative channels.

    Class ``c`` has ``1 + K_c`` features: its text weight ``W[:, c]`` and
    its cache keys. Per channel ``d``::

        sim[d] = mean over i != j, m, n of feats[i, m, d] * feats[j, n, d]
               = ((sum_c S_c[d])**2 - sum_c S_c[d]**2) / count
        var[d] = torch.var(W[d, :])            # unbiased, across classes
        criterion = -w0 * sim + w1 * var

    with ``S_c`` the sum of class ``c``'s features and ``count`` the number
    of ``(i, m, j, n)`` pairs with ``i != j``. Computed in float64.

    Args:
        zero_shot_weights: ``W`` ``(C, N)``.
        cache_keys: ``(NK, C)``.
        cache_values: One-hot ``(NK, N)``: the class of each key.
        feat_num: Channels kept.
        criterion_weights: ``(w0, w1)``.

    Returns:
        Long indices ``(feat_num, )``, best first (``torch.topk`` order).
    """
    channels, num_classes = zero_shot_weights.shape
    if feat_num > channels:
        raise ValueError(
            f'APEHead(feat_num={feat_num}) keeps more channels than the '
            f'features have (C={channels}): set feat_num <= {channels}.')
    if num_classes < 2:
        raise ValueError('APE channel selection needs at least 2 classes, '
                         f'got {num_classes}.')
    weights = zero_shot_weights.double()
    values = cache_values.double()
    class_sums = weights.t() + values.t() @ cache_keys.double()  # (N, C)
    class_sizes = 1 + values.sum(dim=0)  # (N, )
    count = class_sizes.sum()**2 - (class_sizes**2).sum()
    sim = (class_sums.sum(dim=0)**2 - (class_sums**2).sum(dim=0)) / count
    var = torch.var(weights, dim=1)
    w0, w1 = (float(w) for w in criterion_weights)
    criterion = -w0 * sim + w1 * var
    return torch.topk(criterion, k=int(feat_num)).indices


@MODELS.register_module()
class APEHead(TipAdapterHead):
    """APE (Adaptive Prior rEfinement, Zhu et al., ICCV 2023), training-free.

    Tip-Adapter's cache (keys ``(NK, C)``, one-hot values ``(NK, N)``,
    built by :class:`BuildCacheHook`) is refined once, when the cache and
    the zero-shot weights ``W`` ``(C, N)`` are both there:

    * channels: ``idx`` ``(D, )`` (``D = feat_num``), the top ``D`` of
      ``-w0 * sim + w1 * var`` (:func:`select_channels`);
    * refined tensors: ``W' = normalize(W[idx], dim=0)`` ``(D, N)``,
      ``keys' = normalize(keys[:, idx], dim=1)`` ``(NK, D)``;
    * value weights: with ``p = softmax(keys' @ W', dim=1)`` ``(NK, N)``::

        div = sum_n values * log2((values + 1e-6) / (p + 1e-6))  # (NK, 1)

    Logits of normalised features ``f`` ``(B, C)``, with
    ``f' = normalize(f[:, idx], dim=1)`` ``(B, D)``::

        soft_values = values * exp(gamma * div)                  # (NK, N)
        logits = clip_logit_scale * f @ W                        # full C
                 + alpha * exp(-beta * (1 - f' @ keys'.T)) @ soft_values

    With ``feat_num = C`` and ``gamma = 0`` this is Tip-Adapter.

    Buffers, besides Tip-Adapter's (saved in checkpoints, resized on load):
    ``feat_indices`` (long ``(D, )``) and ``cache_div`` (``(NK, 1)``).

    Args:
        num_classes (int): N.
        alpha (float): Weight of the cache logits before the search.
        beta (float): Sharpness of the affinities before the search.
        gamma (float): Strength of the value weights before the search.
        feat_num (int): Channels kept, ``D`` (500 for ImageNet RN50).
        criterion_weights (tuple): ``(w0, w1)`` of the channel criterion.
        search_scale (tuple): ``(beta, alpha, gamma)`` upper ends of the
            grid.
        search_step (tuple): ``(beta, alpha, gamma)`` numbers of points:
            ``beta_i = i * (s0 - 0.1) / n0 + 0.1``, likewise alpha, and
            ``gamma_i = i * s2 / n2`` (from 0).
        clip_logit_scale (float): As :class:`TipAdapterHead`.
        loss, topk, init_cfg: As :class:`TipAdapterHead`.
    """

    dynamic_buffers = tuple(TipAdapterHead.dynamic_buffers) + (
        'feat_indices', 'cache_div')

    def __init__(self,
                 num_classes: int,
                 alpha: float = 2.0,
                 beta: float = 1.0,
                 gamma: float = 0.1,
                 feat_num: int = 500,
                 criterion_weights: Sequence[float] = (0.7, 0.3),
                 search_scale: Sequence[float] = (7.0, 7.0, 0.5),
                 search_step: Sequence[int] = (200, 20, 5),
                 clip_logit_scale: float = 100.0,
                 loss: dict = dict(type='CrossEntropyLoss', loss_weight=1.0),
                 topk: Union[int, Tuple[int]] = (1, ),
                 init_cfg: Union[dict, None] = None) -> None:
        if len(search_scale) != 3 or len(search_step) != 3:
            raise ValueError(
                'APEHead searches (beta, alpha, gamma): search_scale and '
                f'search_step need 3 values, got {tuple(search_scale)} and '
                f'{tuple(search_step)}.')
        if int(feat_num) < 1:
            raise ValueError(f'feat_num must be >= 1, got {feat_num}.')
        if len(criterion_weights) != 2:
            raise ValueError('criterion_weights is (w0, w1), got '
                             f'{tuple(criterion_weights)}.')
        super().__init__(
            num_classes,
            alpha=alpha,
            beta=beta,
            search_scale=search_scale,
            search_step=search_step,
            clip_logit_scale=clip_logit_scale,
            train_cache_keys=False,
            loss=loss,
            topk=topk,
            init_cfg=init_cfg)
        self.register_hyperparameter('gamma', gamma)
        self.feat_num = int(feat_num)
        self.criterion_weights = tuple(float(w) for w in criterion_weights)
        self.register_buffer('feat_indices', torch.zeros(0,
                                                         dtype=torch.long))
        self.register_buffer('cache_div', torch.zeros(0, 1))

    # -- refinement ----------------------------------------------------------
    @property
    def is_refined(self) -> bool:
        return self.feat_indices.numel() > 0

    def build_cache(self, view_feats: torch.Tensor,
                    labels: torch.Tensor) -> None:
        """Tip-Adapter's cache from the views ``(V, S, C)`` and labels
        ``(S,)``, then APE's refinement (needs the zero-shot weights)."""
        if not self.has_zero_shot_weights:
            raise RuntimeError(
                'APEHead needs its zero_shot_weights (C, N) before the cache '
                'is built: the channel selection uses the text weights. '
                'BuildCacheHook builds them first when the classifier has a '
                'text_encoder; otherwise call set_zero_shot_weights().')
        super().build_cache(view_feats, labels)

    def set_cache(self, cache_keys: torch.Tensor,
                  cache_values: torch.Tensor) -> None:
        super().set_cache(cache_keys, cache_values)
        self._refresh_refinement()

    def set_zero_shot_weights(self, zero_shot_weights: torch.Tensor) -> None:
        super().set_zero_shot_weights(zero_shot_weights)
        self._refresh_refinement()

    def _refresh_refinement(self) -> None:
        """Keep the refinement a function of the current cache and ``W``."""
        if self.has_cache and self.has_zero_shot_weights:
            self.refine()
        else:
            device = self.cache_values.device
            self.feat_indices = torch.zeros(0, dtype=torch.long,
                                            device=device)
            self.cache_div = torch.zeros(0, 1, device=device)

    @torch.no_grad()
    def refine(self) -> None:
        """Select the channels and compute ``cache_div`` from the current
        cache and zero-shot weights."""
        self._require_cache()
        if not self.has_zero_shot_weights:
            raise RuntimeError('APEHead.refine() needs zero_shot_weights.')
        weights, keys = self.zero_shot_weights, self.cache_keys
        if weights.shape[0] != keys.shape[1]:
            raise ValueError(
                f'zero_shot_weights {tuple(weights.shape)} and cache_keys '
                f'{tuple(keys.shape)} disagree on the channels C.')
        indices = select_channels(weights, keys, self.cache_values,
                                  self.feat_num, self.criterion_weights)
        refined_weights = F.normalize(weights.double()[indices], dim=0)
        refined_keys = F.normalize(keys.double()[:, indices], dim=1)
        key_probs = (refined_keys @ refined_weights).softmax(dim=1)
        values = self.cache_values.double()
        div = (values * torch.log2(
            (values + 1e-6) / (key_probs + 1e-6))).sum(dim=1, keepdim=True)
        self.feat_indices = indices.to(self.cache_values.device)
        self.cache_div = div.float().to(self.cache_values.device)

    def _require_refinement(self) -> None:
        self._require_cache()
        if not self.is_refined:
            raise RuntimeError(
                'APEHead has a cache but no channel selection: it is made '
                'when both the cache and the zero_shot_weights are set '
                '(BuildCacheHook, set_cache/set_zero_shot_weights, or '
                'refine()), or loaded from a checkpoint.')

    def refined_keys(self) -> torch.Tensor:
        """``keys'`` ``(NK, D)``."""
        self._require_refinement()
        return F.normalize(self.cache_keys[:, self.feat_indices], dim=1)

    def value_weights(self, gamma=None) -> torch.Tensor:
        """``exp(gamma * div)`` ``(NK, 1)``, at the current ``gamma`` by
        default."""
        self._require_refinement()
        gamma = self.gamma if gamma is None else gamma
        return torch.exp(gamma * self.cache_div)

    def soft_cache_values(self, gamma=None) -> torch.Tensor:
        """``values * exp(gamma * div)`` ``(NK, N)``."""
        return self.cache_values * self.value_weights(gamma)

    # -- cache part ----------------------------------------------------------
    def affinity(self, feats: torch.Tensor) -> torch.Tensor:
        """``(B, C) -> (B, NK)``: ``f' @ keys'.T`` on the selected
        channels."""
        keys = self.refined_keys()
        refined_feats = F.normalize(feats[:, self.feat_indices], dim=1)
        return refined_feats @ keys.t()

    def cache_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """``(B, C) -> (B, N)``, at the current ``beta`` and ``gamma``."""
        affinity = self.affinity(feats)
        return torch.exp(-self.beta * (1 - affinity)) @ \
            self.soft_cache_values()

    def forward(self, feats: Tuple[torch.Tensor]) -> torch.Tensor:
        """APE logits ``(B, N)`` of normalised features."""
        f = self.pre_logits(feats)
        return self.clip_logits(f) + self.alpha * self.cache_logits(f)

    # -- search --------------------------------------------------------------
    def search_grid(self) -> 'OrderedDict[str, torch.Tensor]':
        scale, steps = self.search_scale, self.search_step
        return OrderedDict(
            beta=linear_grid(scale[0], steps[0]),
            alpha=linear_grid(scale[1], steps[1]),
            gamma=torch.tensor([i * scale[2] / steps[2]
                                for i in range(steps[2])],
                               dtype=torch.float64))

    @torch.no_grad()
    def count_correct(self, feats: torch.Tensor, labels: torch.Tensor,
                      max_elements: int = 2**26) -> torch.Tensor:
        """Correct top-1 counts ``(n_beta, n_alpha, n_gamma)`` (int64).

        Per gamma, betas go ``b`` at a time and alphas ``a`` at a time, so
        that the temporaries (``(b, M, NK)`` affinities, ``(a, b, M, N)``
        logits) stay within ``max_elements`` (down to one point at a time).
        """
        grid = self.search_grid()
        betas = grid['beta'].to(feats.device, torch.float32)
        alphas = grid['alpha'].to(feats.device, torch.float32)
        gammas = grid['gamma'].to(feats.device, torch.float32)
        clip_logits = self.clip_logits(feats)  # (M, N)
        distance = 1 - self.affinity(feats)  # (M, NK)
        num, num_keys = distance.shape
        num_classes = self.num_classes
        per_beta = num * max(num_keys, len(alphas) * num_classes)
        b_chunk = max(1, min(len(betas), max_elements // max(per_beta, 1)))
        a_chunk = max(1, min(len(alphas),
                             max_elements // max(b_chunk * num * num_classes,
                                                 1)))
        correct = torch.empty(len(betas), len(alphas), len(gammas),
                              dtype=torch.int64)
        for g, gamma in enumerate(gammas):
            soft_values = self.soft_cache_values(gamma)  # (NK, N)
            for b0 in range(0, len(betas), b_chunk):
                beta = betas[b0:b0 + b_chunk, None, None]  # (b, 1, 1)
                cache_logits = torch.exp(-beta * distance) @ soft_values
                for a0 in range(0, len(alphas), a_chunk):
                    alpha = alphas[a0:a0 + a_chunk, None, None, None]
                    logits = clip_logits + alpha * cache_logits  # (a,b,M,N)
                    hits = logits.argmax(dim=-1) == labels  # (a, b, M)
                    correct[b0:b0 + b_chunk, a0:a0 + a_chunk, g] = hits.sum(
                        dim=-1).t().cpu()
        return correct
