"""Tip-Adapter: zero-shot CLIP plus a training-free cache model."""
from collections import OrderedDict
from typing import Dict, Optional, Sequence, Tuple, Union

import torch

from mmpretrain.registry import MODELS
from ...structures import Features
from .cache_model import KeyValueCache
from .zero_shot_head import ZeroShotHead


def linear_grid(scale: float, steps: int) -> torch.Tensor:
    """``i * (scale - 0.1) / steps + 0.1`` for ``i`` in ``[0, steps)``,
    float64, as Tip-Adapter's reference search computes it."""
    return torch.tensor([i * (scale - 0.1) / steps + 0.1
                         for i in range(int(steps))], dtype=torch.float64)


@MODELS.register_module()
class TipAdapterHead(ZeroShotHead):
    """Tip-Adapter (Zhang et al., ECCV 2022) for L2-normalised features
    ``f`` ``(B, C)``::

        clip_logits  = clip_logit_scale * f @ zero_shot_weights
        cache_logits = exp(-beta * (1 - f @ cache.keys.T)) @ cache.values
        logits       = clip_logits + alpha * cache_logits

    ``alpha = 0`` gives zero-shot CLIP exactly. The cache
    (:class:`KeyValueCache`: keys ``(NK, C)``, one-hot values ``(NK, N)``,
    ``beta``) is fitted on the views of the few-shot set: their raw
    features averaged per image, then normalised.

    Args:
        num_classes (int): N.
        alpha (float): Weight of the cache logits: the fixed value, and the
            one the Tip-Adapter-F loss uses.
        beta (float): Sharpness of the affinities, likewise.
        search_scale (tuple): ``(beta, alpha)`` upper ends of the grid.
        search_step (tuple): ``(beta, alpha)`` numbers of grid points
            (:func:`linear_grid`).
        clip_logit_scale (float): As :class:`ZeroShotHead`.
        train_cache_keys (bool): Tip-Adapter-F: the keys are learnable and
            trained with cross-entropy on these logits.
        loss, topk, init_cfg: As :class:`ZeroShotHead`.
    """

    class_agnostic = False  # fitted per class
    legacy_names = {
        'cache_keys': ('cache.keys', ),
        'cache_values': ('cache.values', ),
        'beta': ('cache.beta', ),
    }
    method_name = 'Tip-Adapter'

    def __init__(self,
                 num_classes: int,
                 alpha: float = 1.0,
                 beta: float = 1.0,
                 search_scale: Sequence[float] = (7.0, 3.0),
                 search_step: Sequence[int] = (200, 20),
                 clip_logit_scale: float = 100.0,
                 train_cache_keys: bool = False,
                 loss: dict = dict(type='CrossEntropyLoss', loss_weight=1.0),
                 topk: Union[int, Tuple[int]] = (1, ),
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(
            num_classes,
            clip_logit_scale=clip_logit_scale,
            loss=loss,
            topk=topk,
            init_cfg=init_cfg)
        self.cache = KeyValueCache(
            self.num_classes, beta=beta, learnable_keys=train_cache_keys)
        self.register_hyperparameter('alpha', alpha)
        self.register_hyperparameter('beta', beta, path='cache.beta')
        self.search_scale = tuple(float(s) for s in search_scale)
        self.search_step = tuple(int(s) for s in search_step)

    @property
    def is_fitted(self) -> bool:
        return self.cache.is_built

    def fit(self, view_feats: Features, labels: torch.Tensor) -> None:
        """Build the cache from the views ``((V, S, C), )`` and labels."""
        views, = self.check_views(view_feats, labels)
        self.cache.build(views, labels)

    def forward(self, feats: Features) -> torch.Tensor:
        """Tip-Adapter logits ``(B, N)``."""
        f = self.pre_logits(feats)
        return self.clip_logits(f) + self.alpha * self.cache.logits(f)

    # -- search --------------------------------------------------------------
    def search_grid(self) -> 'OrderedDict[str, torch.Tensor]':
        return OrderedDict(
            beta=linear_grid(self.search_scale[0], self.search_step[0]),
            alpha=linear_grid(self.search_scale[1], self.search_step[1]))

    @torch.no_grad()
    def count_correct(self, feats: Features, labels: torch.Tensor,
                      params: Dict[str, float],
                      max_elements: int = 2**26) -> torch.Tensor:
        """``(n_beta, n_alpha)`` counts of Tip-Adapter's logits."""
        f = self.check_feats(feats)[0]
        grid = self.search_grid()
        return self.cache.count_correct(
            f, labels, grid['beta'], grid['alpha'],
            base_logits=self.clip_logits(f), max_elements=max_elements)
