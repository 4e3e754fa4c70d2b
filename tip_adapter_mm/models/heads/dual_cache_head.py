"""Tip-Adapter with a second cache whose keys come from another visual
encoder (CaFo's DINO cache, any MMPretrain backbone)."""
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from mmpretrain.registry import MODELS
from ...structures import Features
from .base_head import SearchStage
from .cache_model import KeyValueCache
from .tip_adapter_head import TipAdapterHead, linear_grid


@MODELS.register_module()
class DualCacheTipAdapterHead(TipAdapterHead):
    """Tip-Adapter plus a second cache model, for features ``f`` ``(B, C)``
    of the CLIP encoder and ``f2`` ``(B, C2)`` of the second encoder::

        logits = clip_logit_scale * f @ zero_shot_weights
               + alpha  * exp(-beta  * (1 - f  @ cache.keys.T))        @ L
               + alpha2 * exp(-beta2 * (1 - f2 @ second_cache.keys.T)) @ L

    Both caches hold the same few-shot images, so their values ``L`` are the
    same one-hot labels. ``alpha2 = 0`` gives Tip-Adapter exactly.

    The search runs in two stages (``search_mode='staged'``, the
    default): first ``(beta, alpha)`` with the second cache off, which is
    Tip-Adapter's own search, then ``(beta2, alpha2)`` with the first pair
    fixed; the alpha2 grid starts at 0, so the search can decline the second
    cache. ``search_mode='joint'`` searches the full 4-D grid (the product
    of both grids' sizes in points: far costlier).

    Args:
        num_classes (int): N.
        alpha, beta (float): First cache, fixed values.
        alpha2, beta2 (float): Second cache, fixed values.
        search_scale, search_step (tuple): ``(beta, alpha)`` grid.
        second_search_scale, second_search_step (tuple): ``(beta2,
            alpha2)`` grid; alpha2 also takes 0.
        search_mode (str): 'staged' or 'joint'.
        train_cache_keys (bool): Tip-Adapter-F: both key sets are learnable.
        clip_logit_scale, loss, topk, init_cfg: As :class:`TipAdapterHead`.
    """

    legacy_names = {
        **TipAdapterHead.legacy_names,
        'cache_values': ('cache.values', 'second_cache.values'),
        'second_cache_keys': ('second_cache.keys', ),
        'beta2': ('second_cache.beta', ),
    }
    num_feature_sets = 2
    # Tip-Adapter with another cache: configs name the second encoder in
    # their variant (e.g. ``tip_imagenet_16shot_dual_cache_resnet50.py``).
    method_name = 'Tip-Adapter'

    def __init__(self,
                 num_classes: int,
                 alpha: float = 1.0,
                 beta: float = 1.0,
                 alpha2: float = 1.0,
                 beta2: float = 1.0,
                 search_scale: Sequence[float] = (7.0, 3.0),
                 search_step: Sequence[int] = (200, 20),
                 second_search_scale: Sequence[float] = (7.0, 3.0),
                 second_search_step: Sequence[int] = (200, 20),
                 search_mode: str = 'staged',
                 clip_logit_scale: float = 100.0,
                 train_cache_keys: bool = False,
                 loss: dict = dict(type='CrossEntropyLoss', loss_weight=1.0),
                 topk: Union[int, Tuple[int]] = (1, ),
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(
            num_classes,
            alpha=alpha,
            beta=beta,
            search_scale=search_scale,
            search_step=search_step,
            clip_logit_scale=clip_logit_scale,
            train_cache_keys=train_cache_keys,
            loss=loss,
            topk=topk,
            init_cfg=init_cfg)
        if search_mode not in ('staged', 'joint'):
            raise ValueError("search_mode must be 'staged' or 'joint', got "
                             f'{search_mode!r}.')
        self.search_mode = search_mode
        self.second_cache = KeyValueCache(
            self.num_classes, beta=beta2, learnable_keys=train_cache_keys)
        self.register_hyperparameter('alpha2', alpha2)
        self.register_hyperparameter('beta2', beta2, path='second_cache.beta')
        self.second_search_scale = tuple(float(s) for s in second_search_scale)
        self.second_search_step = tuple(int(s) for s in second_search_step)

    @property
    def is_fitted(self) -> bool:
        return self.cache.is_built and self.second_cache.is_built

    def fit(self, view_feats: Features, labels: torch.Tensor) -> None:
        """Both caches from the same views: ``((V, S, C), (V, S, C2))``."""
        views, second_views = self.check_views(view_feats, labels)
        self.cache.build(views, labels)
        self.second_cache.build(second_views, labels)

    def forward(self, feats: Features) -> torch.Tensor:
        """Logits ``(B, N)`` of normalised features ``(f, f2)``."""
        f, f2 = self.pre_logits(feats)
        return (self.clip_logits(f) + self.alpha * self.cache.logits(f) +
                self.alpha2 * self.second_cache.logits(f2))

    # -- search --------------------------------------------------------------
    def second_grid(self) -> 'OrderedDict[str, torch.Tensor]':
        scale, step = self.second_search_scale, self.second_search_step
        return OrderedDict(
            beta2=linear_grid(scale[0], step[0]),
            alpha2=torch.cat([torch.zeros(1, dtype=torch.float64),
                              linear_grid(scale[1], step[1])]))

    def search_grid(self) -> 'OrderedDict[str, torch.Tensor]':
        """All four hyperparameters' values: ``(beta, alpha, beta2,
        alpha2)``; see :meth:`search_stages` for how they are visited."""
        return OrderedDict(**super().search_grid(), **self.second_grid())

    def search_stages(self) -> List[SearchStage]:
        if self.search_mode == 'joint':
            return [SearchStage(self.search_grid(), self.count_correct)]
        return [
            SearchStage(super().search_grid(), super().count_correct),
            SearchStage(self.second_grid(), self.count_correct_second)
        ]

    @torch.no_grad()
    def count_correct_second(self, feats: Features, labels: torch.Tensor,
                             params: Dict[str, float],
                             max_elements: int = 2**26) -> torch.Tensor:
        """Stage 2: ``(n_beta2, n_alpha2)`` counts, the first cache at
        ``params['beta']``, ``params['alpha']``."""
        f, f2 = self.check_feats(feats)
        grid = self.second_grid()
        base = self.clip_logits(f) + params['alpha'] * self.cache.logits(
            f, beta=params['beta'])
        return self.second_cache.count_correct(
            f2, labels, grid['beta2'], grid['alpha2'], base_logits=base,
            max_elements=max_elements)

    @torch.no_grad()
    def count_correct(self, feats: Features, labels: torch.Tensor,
                      params: Dict[str, float],
                      max_elements: int = 2**26) -> torch.Tensor:
        """Counts over the joint grid, ``(n_beta, n_alpha, n_beta2,
        n_alpha2)``: one Tip-Adapter grid count per ``(beta2, alpha2)``."""
        f, f2 = self.check_feats(feats)
        first, second = super().search_grid(), self.second_grid()
        clip = self.clip_logits(f)
        affinity = self.cache.affinity(f)
        correct = torch.empty(
            *(len(g) for g in first.values()),
            *(len(g) for g in second.values()), dtype=torch.int64)
        for i, beta2 in enumerate(second['beta2'].tolist()):
            logits2 = self.second_cache.logits(f2, beta=beta2)
            for j, alpha2 in enumerate(second['alpha2'].tolist()):
                correct[:, :, i, j] = self.cache.count_correct(
                    f, labels, first['beta'], first['alpha'],
                    base_logits=clip + alpha2 * logits2, affinity=affinity,
                    max_elements=max_elements)
        return correct
