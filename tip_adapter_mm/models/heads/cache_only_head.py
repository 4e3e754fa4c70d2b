"""The cache model alone: a training-free few-shot classifier for any
visual backbone, with or without a text tower."""
from collections import OrderedDict
from typing import Dict, Optional, Tuple, Union

import torch

from mmpretrain.registry import MODELS
from ...structures import Features
from .base_head import FewShotHead
from .cache_model import KeyValueCache
from .tip_adapter_head import linear_grid


@MODELS.register_module()
class CacheOnlyHead(FewShotHead):
    """Tip-Adapter's cache term without zero-shot CLIP, for L2-normalised
    features ``f`` ``(B, C)`` of any backbone::

        logits = alpha * exp(-beta * (1 - f @ cache.keys.T)) @ cache.values

    A positive ``alpha`` does not change the prediction, so only ``beta``
    is searched; ``alpha`` scales the logits that the Tip-Adapter-F loss
    sees (a temperature).

    Args:
        num_classes (int): N.
        alpha (float): Scale of the logits (fixed, not searched).
        beta (float): Sharpness of the affinities: the fixed value.
        search_scale (float): Upper end of the beta grid.
        search_step (int): Number of beta grid points.
        train_cache_keys (bool): Tip-Adapter-F: learnable keys.
        loss, topk, init_cfg: As :class:`FewShotHead`.
    """

    legacy_names = {
        'cache_keys': ('cache.keys', ),
        'cache_values': ('cache.values', ),
        'beta': ('cache.beta', ),
    }
    method_name = 'Cache only'

    def __init__(self,
                 num_classes: int,
                 alpha: float = 1.0,
                 beta: float = 1.0,
                 search_scale: float = 7.0,
                 search_step: int = 200,
                 train_cache_keys: bool = False,
                 loss: dict = dict(type='CrossEntropyLoss', loss_weight=1.0),
                 topk: Union[int, Tuple[int]] = (1, ),
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(num_classes, loss=loss, topk=topk, init_cfg=init_cfg)
        if alpha <= 0:
            raise ValueError(f'alpha must be positive, got {alpha}.')
        self.register_buffer('alpha',
                             torch.tensor(float(alpha), dtype=torch.float64))
        self.cache = KeyValueCache(
            self.num_classes, beta=beta, learnable_keys=train_cache_keys)
        self.register_hyperparameter('beta', beta, path='cache.beta')
        self.search_scale = float(search_scale)
        self.search_step = int(search_step)

    @property
    def is_fitted(self) -> bool:
        return self.cache.is_built

    def fit(self, view_feats: Features, labels: torch.Tensor) -> None:
        """Build the cache from the views ``((V, S, C), )`` and labels."""
        views, = self.check_views(view_feats, labels)
        self.cache.build(views, labels)

    def forward(self, feats: Features) -> torch.Tensor:
        """Cache logits ``(B, N)``."""
        return self.alpha * self.cache.logits(self.pre_logits(feats))

    def search_grid(self) -> 'OrderedDict[str, torch.Tensor]':
        return OrderedDict(
            beta=linear_grid(self.search_scale, self.search_step))

    @torch.no_grad()
    def count_correct(self, feats: Features, labels: torch.Tensor,
                      params: Dict[str, float],
                      max_elements: int = 2**26) -> torch.Tensor:
        return self.cache.count_correct(
            self.check_feats(feats)[0], labels, self.search_grid()['beta'],
            torch.ones(1),
            max_elements=max_elements)[:, 0]
