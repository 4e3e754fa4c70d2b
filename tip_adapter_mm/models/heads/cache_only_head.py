"""The cache model alone: a training-free few-shot classifier for any
visual backbone, with or without a text tower."""
from collections import OrderedDict
from typing import Tuple, Union

import torch

from mmpretrain.registry import MODELS
from .base_cache_head import BaseCacheHead
from .cache_model import cache_logits, count_correct_on_grid
from .tip_adapter_head import linear_grid


@MODELS.register_module()
class CacheOnlyHead(BaseCacheHead):
    """The cache term of Tip-Adapter (SPEC section 1) without zero-shot
    CLIP, for features ``f`` ``(B, C)`` of any backbone::

        logits = alpha * exp(-beta * (1 - f @ cache_keys.T)) @ cache_values

    A positive ``alpha`` does not change the prediction, so only ``beta``
    is searched; ``alpha`` scales the logits that the Tip-Adapter-F loss
    sees (a temperature).

    Args:
        num_classes (int): N.
        alpha (float): Scale of the logits (fixed, not searched).
        beta (float): Sharpness of the affinities before the search.
        search_scale (float): Upper end of the beta grid.
        search_step (int): Number of beta grid points.
        train_cache_keys (bool): Tip-Adapter-F: learnable keys.
    """

    def __init__(self,
                 num_classes: int,
                 alpha: float = 1.0,
                 beta: float = 1.0,
                 search_scale: float = 7.0,
                 search_step: int = 200,
                 train_cache_keys: bool = False,
                 loss: dict = dict(type='CrossEntropyLoss', loss_weight=1.0),
                 topk: Union[int, Tuple[int]] = (1, ),
                 init_cfg: Union[dict, None] = None) -> None:
        super().__init__(
            num_classes,
            train_cache_keys=train_cache_keys,
            loss=loss,
            topk=topk,
            init_cfg=init_cfg)
        if alpha <= 0:
            raise ValueError(f'alpha must be positive, got {alpha}.')
        self.register_hyperparameter('alpha', alpha)
        self.register_hyperparameter('beta', beta)
        self.search_scale = float(search_scale)
        self.search_step = int(search_step)

    def forward(self, feats: Tuple[torch.Tensor]) -> torch.Tensor:
        """Cache logits ``(B, N)`` of normalised features ``(B, C)``."""
        self._require_cache()
        f = self.pre_logits(feats)
        return self.alpha * cache_logits(f, self.cache_keys,
                                         self.cache_values, self.beta)

    def search_grid(self) -> 'OrderedDict[str, torch.Tensor]':
        return OrderedDict(
            beta=linear_grid(self.search_scale, self.search_step))

    @torch.no_grad()
    def count_correct(self, feats: torch.Tensor, labels: torch.Tensor,
                      max_elements: int = 2**26) -> torch.Tensor:
        self._require_cache()
        return count_correct_on_grid(
            feats, self.cache_keys, self.cache_values, labels,
            self.search_grid()['beta'], torch.ones(1),
            max_elements=max_elements)[:, 0]
