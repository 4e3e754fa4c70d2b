"""GDA: Gaussian discriminant analysis on the few-shot views, plus CLIP."""
from collections import OrderedDict
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from mmpretrain.registry import MODELS
from ...evaluation import top1_hits
from ...structures import Features
from .zero_shot_head import ZeroShotHead


@MODELS.register_module()
class GDAHead(ZeroShotHead):
    """Training-free GDA head ("A Hard-to-Beat Baseline for Training-free
    CLIP-based Adaptation", ICLR 2024) for normalised features ``f``
    ``(B, C)``::

        logits = clip_logit_scale * f @ zero_shot_weights
                 + alpha * (f @ gda_weights + gda_bias)

    Fitted in closed form on the L2-normalised features of all augmented
    views of the few-shot images (``M`` vectors, ``N`` classes, ``C``
    channels): class means ``mu`` ``(N, C)``, pooled covariance ``S`` of the
    class-centred vectors, ``precision = C * pinv((M - 1) S + trace(S) I)``,
    ``gda_weights = precision @ mu.T`` ``(C, N)`` and
    ``gda_bias_c = log p_c - mu_c^T precision mu_c / 2`` with ``p_c`` the
    class frequencies. ``alpha`` is searched on validation over
    ``alpha_grid``.

    With ``zero_shot_term=False`` the logits are the GDA scores alone,
    ``f @ gda_weights + gda_bias``: no zero-shot weights, hence no text
    tower (``uses_text`` is False for the head), so GDA runs on any visual
    backbone; ``alpha`` would only scale the logits, so nothing is
    searched.

    Args:
        num_classes (int): N.
        alpha (float): Weight of the GDA logits: the fixed value.
        alpha_grid (sequence of float): Values searched for ``alpha``.
        zero_shot_term (bool): Add CLIP's zero-shot logits (True) or use
            the GDA scores alone (False).
        clip_logit_scale, loss, topk, init_cfg: As :class:`ZeroShotHead`.
    """

    class_agnostic = False  # fitted per class
    dynamic_buffers = ZeroShotHead.dynamic_buffers + ('gda_weights',
                                                      'gda_bias')
    # Earlier versions kept an (always empty) cache in GDA checkpoints.
    legacy_names = {'cache_keys': (), 'cache_values': ()}
    method_name = 'GDA'

    def __init__(self,
                 num_classes: int,
                 alpha: float = 1.0,
                 alpha_grid: Sequence[float] = (1e-4, 1e-3, 1e-2, 0.1, 1.0,
                                                10.0, 100.0),
                 zero_shot_term: bool = True,
                 clip_logit_scale: float = 100.0,
                 loss: dict = dict(type='CrossEntropyLoss', loss_weight=1.0),
                 topk: Union[int, Tuple[int]] = (1, ),
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(
            num_classes,
            clip_logit_scale=clip_logit_scale,
            loss=loss,
            topk=topk,
            init_cfg=init_cfg)
        self.register_hyperparameter('alpha', alpha)
        self.alpha_grid = tuple(float(a) for a in alpha_grid)
        self.zero_shot_term = bool(zero_shot_term)
        # Without the zero-shot term the classifier builds no zero-shot
        # weights (and needs no text encoder) for this head.
        self.uses_text = self.zero_shot_term
        self.register_buffer('gda_weights', torch.zeros(0, self.num_classes))
        self.register_buffer('gda_bias', torch.zeros(0))

    @property
    def is_fitted(self) -> bool:
        return self.gda_weights.numel() > 0

    @torch.no_grad()
    def fit(self, view_feats: Features, labels: torch.Tensor) -> None:
        """Fit class means and the shared precision on every view.

        Args:
            view_feats: Raw features ``((V, S, C), )`` of ``V`` views of
                ``S`` images.
            labels: ``(S,)``.
        """
        view_feats, = self.check_views(view_feats, labels)
        num_views, _, channels = view_feats.shape
        vecs = F.normalize(view_feats.double().reshape(-1, channels), dim=-1)
        targets = labels.long().repeat(num_views)
        counts = torch.bincount(targets, minlength=self.num_classes)
        self.check_every_class(labels)
        one_hot = F.one_hot(targets, self.num_classes).double()  # (M, N)
        means = (one_hot.t() @ vecs) / counts[:, None]  # (N, C)
        centred = vecs - means[targets]
        cov = torch.cov(centred.t())  # (C, C), divides by M - 1
        precision = channels * torch.linalg.pinv(
            (len(vecs) - 1) * cov +
            torch.trace(cov) * torch.eye(channels, dtype=cov.dtype,
                                         device=cov.device))
        weights = precision @ means.t()  # (C, N)
        priors = counts.double() / counts.sum()
        bias = priors.log() - 0.5 * (means * weights.t()).sum(dim=1)
        device = self.zero_shot_weights.device
        self.gda_weights = weights.float().to(device)
        self.gda_bias = bias.float().to(device)

    def gda_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """``(B, C) -> (B, N)`` linear discriminant scores."""
        self._require_fitted()
        return feats @ self.gda_weights + self.gda_bias

    def forward(self, feats: Features) -> torch.Tensor:
        f = self.pre_logits(feats)
        if not self.zero_shot_term:
            return self.gda_logits(f)
        return self.clip_logits(f) + self.alpha * self.gda_logits(f)

    def search_grid(self) -> 'OrderedDict[str, torch.Tensor]':
        """``alpha_grid``; empty without the zero-shot term (alpha would
        only scale the logits)."""
        if not self.zero_shot_term:
            return OrderedDict()
        return OrderedDict(
            alpha=torch.tensor(self.alpha_grid, dtype=torch.float64))

    @torch.no_grad()
    def count_correct(self, feats: Features, labels: torch.Tensor,
                      params: Dict[str, float],
                      max_elements: int = 2**26) -> torch.Tensor:
        f, = self.check_feats(feats)
        if not self.zero_shot_term:
            raise RuntimeError('GDAHead(zero_shot_term=False) has nothing '
                               'to search: its logits are the GDA scores.')
        alphas = self.search_grid()['alpha'].to(f.device, torch.float32)
        clip_logits = self.clip_logits(f)  # (M, N)
        gda_logits = self.gda_logits(f)  # (M, N)
        chunk = max(1, min(len(alphas), max_elements // clip_logits.numel()))
        correct = torch.empty(len(alphas), dtype=torch.int64)
        for start in range(0, len(alphas), chunk):
            alpha = alphas[start:start + chunk, None, None]
            logits = clip_logits + alpha * gda_logits  # (a, M, N)
            correct[start:start + chunk] = top1_hits(logits, labels).cpu()
        return correct
