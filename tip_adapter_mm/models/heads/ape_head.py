"""APE: Tip-Adapter's cache with refined channels and value weights."""
from collections import OrderedDict
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from mmpretrain.registry import MODELS
from ...structures import Features
from .base_head import resize_from_state_dict
from .cache_model import KeyValueCache
from .tip_adapter_head import linear_grid
from .zero_shot_head import ZeroShotHead


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


class SelectedChannelsCache(KeyValueCache):
    """A :class:`KeyValueCache` whose affinities use only the channels
    ``feat_indices`` ``(D, )`` (APE's refinement)::

        affinity = normalize(f[:, idx]) @ normalize(keys[:, idx]).T

    ``feat_indices`` is empty until :meth:`select` sets it.
    """

    def __init__(self, num_classes: int, beta: float = 1.0) -> None:
        super().__init__(num_classes, beta=beta, learnable_keys=False)
        self.register_buffer('feat_indices', torch.zeros(0,
                                                         dtype=torch.long))

    @property
    def has_selection(self) -> bool:
        return self.feat_indices.numel() > 0

    def select(self, feat_indices: torch.Tensor) -> None:
        self.feat_indices = feat_indices.long().to(self.values.device)

    def affinity(self, feats: torch.Tensor) -> torch.Tensor:
        """``(B, C) -> (B, NK)`` on the selected channels."""
        self._require_built()
        if not self.has_selection:
            raise RuntimeError(
                'APE\'s cache has keys but no channel selection: it is made '
                'when the head is fitted with its zero_shot_weights set, or '
                'loaded from a checkpoint.')
        keys = F.normalize(self.keys[:, self.feat_indices], dim=1)
        return F.normalize(feats[:, self.feat_indices], dim=1) @ keys.t()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        resize_from_state_dict(self, state_dict, prefix, ('feat_indices', ))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@MODELS.register_module()
class APEHead(ZeroShotHead):
    """APE (Adaptive Prior rEfinement, Zhu et al., ICCV 2023), training-free.

    Tip-Adapter's cache (keys ``(NK, C)``, one-hot values ``(NK, N)``) is
    refined once fitted, with the zero-shot weights ``W`` ``(C, N)``:

    * channels: ``idx`` ``(D, )`` (``D = feat_num``), the top ``D`` of
      ``-w0 * sim + w1 * var`` (:func:`select_channels`); the cache's
      affinities use them (:class:`SelectedChannelsCache`);
    * value weights: with ``W' = normalize(W[idx], dim=0)``, ``keys' =
      normalize(keys[:, idx], dim=1)`` and ``p = softmax(keys' @ W')``
      ``(NK, N)``::

        cache_div = sum_n values * log2((values + 1e-6) / (p + 1e-6))

    Logits of normalised features ``f`` ``(B, C)``::

        soft_values = values * exp(gamma * cache_div)            # (NK, N)
        logits = clip_logit_scale * f @ W                        # full C
                 + alpha * exp(-beta * (1 - affinity(f))) @ soft_values

    With ``feat_num = C`` and ``gamma = 0`` this is Tip-Adapter.

    Args:
        num_classes (int): N.
        alpha, beta, gamma (float): Fixed values of the cache weight, the
            sharpness and the strength of the value weights.
        feat_num (int): Channels kept, ``D`` (500 for ImageNet RN50).
        criterion_weights (tuple): ``(w0, w1)`` of the channel criterion.
        search_scale (tuple): ``(beta, alpha, gamma)`` upper ends of the
            grid.
        search_step (tuple): ``(beta, alpha, gamma)`` numbers of points:
            ``beta_i = i * (s0 - 0.1) / n0 + 0.1``, likewise alpha, and
            ``gamma_i = i * s2 / n2`` (from 0).
        clip_logit_scale, loss, topk, init_cfg: As :class:`ZeroShotHead`.
    """

    class_agnostic = False  # fitted per class
    dynamic_buffers = ZeroShotHead.dynamic_buffers + ('cache_div', )
    legacy_names = {
        'cache_keys': ('cache.keys', ),
        'cache_values': ('cache.values', ),
        'beta': ('cache.beta', ),
        'feat_indices': ('cache.feat_indices', ),
    }
    method_name = 'APE'

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
                 init_cfg: Optional[dict] = None) -> None:
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
            clip_logit_scale=clip_logit_scale,
            loss=loss,
            topk=topk,
            init_cfg=init_cfg)
        self.cache = SelectedChannelsCache(self.num_classes, beta=beta)
        self.register_hyperparameter('alpha', alpha)
        self.register_hyperparameter('beta', beta, path='cache.beta')
        self.register_hyperparameter('gamma', gamma)
        self.feat_num = int(feat_num)
        self.criterion_weights = tuple(float(w) for w in criterion_weights)
        self.search_scale = tuple(float(s) for s in search_scale)
        self.search_step = tuple(int(s) for s in search_step)
        self.register_buffer('cache_div', torch.zeros(0, 1))

    # -- fitting -------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self.cache.is_built and self.cache.has_selection

    def fit(self, view_feats: Features, labels: torch.Tensor) -> None:
        """Tip-Adapter's cache from the views ``((V, S, C), )``, then APE's
        refinement (which needs the zero-shot weights)."""
        views, = self.check_views(view_feats, labels)
        if not self.has_zero_shot_weights:
            raise RuntimeError(
                'APEHead needs its zero_shot_weights (C, N) before it is '
                'fitted: the channel selection uses the text weights. The '
                'classifier builds them first when it has a text_encoder; '
                'otherwise call set_zero_shot_weights().')
        self.cache.build(views, labels)
        self.refine()

    def set_zero_shot_weights(self, zero_shot_weights: torch.Tensor) -> None:
        """Store ``W`` (and refine the cache again if it is built)."""
        super().set_zero_shot_weights(zero_shot_weights)
        if self.cache.is_built:
            self.refine()

    @torch.no_grad()
    def refine(self) -> None:
        """Select the channels and compute ``cache_div`` from the cache and
        the zero-shot weights."""
        weights, keys = self.zero_shot_weights, self.cache.keys
        if weights.shape[0] != keys.shape[1]:
            raise ValueError(
                f'zero_shot_weights {tuple(weights.shape)} and cache keys '
                f'{tuple(keys.shape)} disagree on the channels C.')
        values = self.cache.values
        indices = select_channels(weights, keys, values, self.feat_num,
                                  self.criterion_weights)
        refined_weights = F.normalize(weights.double()[indices], dim=0)
        refined_keys = F.normalize(keys.double()[:, indices], dim=1)
        key_probs = (refined_keys @ refined_weights).softmax(dim=1)
        values = values.double()
        div = (values * torch.log2(
            (values + 1e-6) / (key_probs + 1e-6))).sum(dim=1, keepdim=True)
        self.cache.select(indices)
        self.cache_div = div.float().to(self.cache.values.device)

    def soft_values(self, gamma: Optional[float] = None) -> torch.Tensor:
        """``values * exp(gamma * cache_div)`` ``(NK, N)``, at the current
        ``gamma`` by default."""
        gamma = self.gamma if gamma is None else gamma
        return self.cache.values * torch.exp(gamma * self.cache_div)

    def forward(self, feats: Features) -> torch.Tensor:
        """APE logits ``(B, N)``."""
        f = self.pre_logits(feats)
        return self.clip_logits(f) + self.alpha * self.cache.logits(
            f, values=self.soft_values())

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
    def count_correct(self, feats: Features, labels: torch.Tensor,
                      params: Dict[str, float],
                      max_elements: int = 2**26) -> torch.Tensor:
        """Correct top-1 counts ``(n_beta, n_alpha, n_gamma)``: one cache
        grid count per gamma, with its soft values."""
        f, = self.check_feats(feats)
        grid = self.search_grid()
        clip_logits = self.clip_logits(f)
        affinity = self.cache.affinity(f)
        counts = [
            self.cache.count_correct(
                f, labels, grid['beta'], grid['alpha'],
                base_logits=clip_logits,
                values=self.soft_values(float(gamma)), affinity=affinity,
                max_elements=max_elements) for gamma in grid['gamma']
        ]
        return torch.stack(counts, dim=-1)
