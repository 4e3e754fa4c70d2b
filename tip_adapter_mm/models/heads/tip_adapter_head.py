"""Tip-Adapter: zero-shot CLIP plus a training-free cache model."""
from collections import OrderedDict
from typing import Sequence, Tuple, Union

import torch

from mmpretrain.registry import MODELS
from .cache_model import cache_logits, count_correct_on_grid
from .zero_shot_head import ZeroShotCacheHead


def linear_grid(scale: float, steps: int) -> torch.Tensor:
    """``i * (scale - 0.1) / steps + 0.1`` for ``i`` in ``[0, steps)``,
    float64, as the reference search computes it."""
    return torch.tensor([i * (scale - 0.1) / steps + 0.1
                         for i in range(int(steps))], dtype=torch.float64)


@MODELS.register_module()
class TipAdapterHead(ZeroShotCacheHead):
    """Tip-Adapter logits (SPEC section 1) for features ``f`` ``(B, C)``::

        clip_logits  = clip_logit_scale * f @ zero_shot_weights
        affinity     = f @ cache_keys.T
        cache_logits = exp(-beta * (1 - affinity)) @ cache_values
        logits       = clip_logits + alpha * cache_logits

    ``alpha = 0`` gives zero-shot CLIP exactly.

    Args:
        num_classes (int): N.
        alpha (float): Weight of the cache logits before the search.
        beta (float): Sharpness of the affinities before the search.
        search_scale (tuple): ``(beta, alpha)`` upper ends of the grid.
        search_step (tuple): ``(beta, alpha)`` numbers of grid points.
        clip_logit_scale (float): Scale of the zero-shot logits; 100, the
            learned scale of released CLIP models. The classifier replaces
            it with the model's own ``logit_scale.exp()`` when asked.
        train_cache_keys (bool): Tip-Adapter-F: the keys are learnable and
            trained with cross-entropy on these logits at the initial
            alpha and beta.

    Buffers: ``zero_shot_weights`` ``(C, N)`` besides the cache.
    """

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
                 init_cfg: Union[dict, None] = None) -> None:
        super().__init__(
            num_classes,
            clip_logit_scale=clip_logit_scale,
            train_cache_keys=train_cache_keys,
            loss=loss,
            topk=topk,
            init_cfg=init_cfg)
        self.register_hyperparameter('alpha', alpha)
        self.register_hyperparameter('beta', beta)
        self.search_scale = tuple(float(s) for s in search_scale)
        self.search_step = tuple(int(s) for s in search_step)

    # -- cache part ----------------------------------------------------------
    def affinity(self, feats: torch.Tensor) -> torch.Tensor:
        """``(B, C) -> (B, NK)`` cosine similarity to the cache keys."""
        self._require_cache()
        return feats @ self.cache_keys.t()

    def cache_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """``(B, C) -> (B, N)``, at the current ``beta``."""
        self._require_cache()
        return cache_logits(feats, self.cache_keys, self.cache_values,
                            self.beta)

    def forward(self, feats: Tuple[torch.Tensor]) -> torch.Tensor:
        """Tip-Adapter logits ``(B, N)`` of normalised features."""
        f = self.pre_logits(feats)
        return self.clip_logits(f) + self.alpha * self.cache_logits(f)

    # -- search --------------------------------------------------------------
    def search_grid(self) -> 'OrderedDict[str, torch.Tensor]':
        return OrderedDict(
            beta=linear_grid(self.search_scale[0], self.search_step[0]),
            alpha=linear_grid(self.search_scale[1], self.search_step[1]))

    @torch.no_grad()
    def count_correct(self, feats: torch.Tensor, labels: torch.Tensor,
                      max_elements: int = 2**26) -> torch.Tensor:
        self._require_cache()
        grid = self.search_grid()
        return count_correct_on_grid(
            feats, self.cache_keys, self.cache_values, labels, grid['beta'],
            grid['alpha'], base_logits=self.clip_logits(feats),
            max_elements=max_elements)
