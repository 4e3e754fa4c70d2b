"""Tip-Adapter with a second cache whose keys come from another visual
encoder (CaFo's DINO cache, any MMPretrain backbone)."""
from collections import OrderedDict
from typing import List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from mmpretrain.registry import MODELS
from .base_cache_head import SearchStage
from .cache_model import cache_logits, count_correct_on_grid
from .tip_adapter_head import TipAdapterHead, linear_grid


@MODELS.register_module()
class DualCacheTipAdapterHead(TipAdapterHead):
    """Tip-Adapter plus a second cache model, for features ``f`` ``(B, C)``
    of the CLIP encoder and ``f2`` ``(B, C2)`` of the second encoder::

        logits = clip_logit_scale * f @ zero_shot_weights
               + alpha  * exp(-beta  * (1 - f  @ cache_keys.T))        @ L
               + alpha2 * exp(-beta2 * (1 - f2 @ second_cache_keys.T)) @ L

    Both caches hold the same few-shot images, so they share the one-hot
    ``cache_values`` ``L``. ``alpha2 = 0`` gives Tip-Adapter exactly.

    The search runs in two stages (``search_mode='staged'``, the
    default): first ``(beta, alpha)`` with the second cache off, which is
    Tip-Adapter's own search, then ``(beta2, alpha2)`` with the first pair
    fixed; the alpha2 grid starts at 0, so the search can decline the second
    cache. ``search_mode='joint'`` searches the full 4-D grid (the product
    of both grids' sizes in points: far costlier).

    Args:
        num_classes (int): N.
        alpha, beta (float): First cache, before the search.
        alpha2, beta2 (float): Second cache, before the search.
        search_scale, search_step (tuple): ``(beta, alpha)`` grid.
        second_search_scale, second_search_step (tuple): ``(beta2,
            alpha2)`` grid; alpha2 also takes 0.
        search_mode (str): 'staged' or 'joint'.
        train_cache_keys (bool): Tip-Adapter-F: both key sets are learnable.
        **kwargs: As :class:`TipAdapterHead`.

    Buffers: ``second_cache_keys`` ``(NK, C2)`` besides Tip-Adapter's.
    """

    dynamic_buffers = TipAdapterHead.dynamic_buffers + ('second_cache_keys', )
    #: Feature sets :meth:`forward` takes: the classifier's two encoders.
    num_feature_sets = 2

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
                 init_cfg: Union[dict, None] = None) -> None:
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
        self.register_hyperparameter('alpha2', alpha2)
        self.register_hyperparameter('beta2', beta2)
        self.second_search_scale = tuple(float(s) for s in second_search_scale)
        self.second_search_step = tuple(int(s) for s in second_search_step)
        self.register_cache_keys('second_cache_keys')

    # -- cache ---------------------------------------------------------------
    @property
    def has_cache(self) -> bool:
        return super().has_cache and self.second_cache_keys.numel() > 0

    def set_second_cache_keys(self, keys: torch.Tensor) -> None:
        """Store the second encoder's keys ``(NK, C2)``, one per key of the
        first cache (same images, same order)."""
        if keys.dim() != 2 or len(keys) != len(self.cache_values):
            raise ValueError(
                f'Expected second_cache_keys ({len(self.cache_values)}, C2) '
                f'for the {len(self.cache_values)} cached images, got '
                f'{tuple(keys.shape)}.')
        self.assign_cache_keys('second_cache_keys', keys)

    def build_cache(self, view_feats: Sequence[torch.Tensor],
                    labels: torch.Tensor) -> None:
        """Both caches from the same views.

        Args:
            view_feats: Raw features of ``V`` views of ``S`` images, one
                tensor per encoder: ``(V, S, C)`` and ``(V, S, C2)``.
            labels: ``(S,)``.
        """
        first, second = self._two(view_feats)
        super().build_cache(first, labels)
        self.set_second_cache_keys(
            F.normalize(second.float().mean(dim=0), dim=-1))

    def _two(self, feats) -> Tuple[torch.Tensor, torch.Tensor]:
        if isinstance(feats, torch.Tensor) or len(feats) != 2:
            got = 1 if isinstance(feats, torch.Tensor) else len(feats)
            raise ValueError(
                f'{type(self).__name__} takes features of two visual '
                f'encoders, got {got}: set model.second_backbone.')
        return feats[0], feats[1]

    def second_cache_logits(self, feats2: torch.Tensor) -> torch.Tensor:
        """``(B, C2) -> (B, N)``, at the current ``beta2``."""
        self._require_cache()
        return cache_logits(feats2, self.second_cache_keys,
                            self.cache_values, self.beta2)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits ``(B, N)`` of normalised features ``(f, f2)``."""
        f, f2 = self._two(feats)
        return (self.clip_logits(f) + self.alpha * self.cache_logits(f) +
                self.alpha2 * self.second_cache_logits(f2))

    # -- search --------------------------------------------------------------
    def first_grid(self) -> 'OrderedDict[str, torch.Tensor]':
        return TipAdapterHead.search_grid(self)

    def second_grid(self) -> 'OrderedDict[str, torch.Tensor]':
        scale, step = self.second_search_scale, self.second_search_step
        return OrderedDict(
            beta2=linear_grid(scale[0], step[0]),
            alpha2=torch.cat([torch.zeros(1, dtype=torch.float64),
                              linear_grid(scale[1], step[1])]))

    def search_grid(self) -> 'OrderedDict[str, torch.Tensor]':
        """All four hyperparameters' values: ``(beta, alpha, beta2,
        alpha2)``; see :meth:`search_stages` for how they are visited."""
        return OrderedDict(**self.first_grid(), **self.second_grid())

    def search_stages(self) -> List[SearchStage]:
        if self.search_mode == 'joint':
            return [SearchStage(self.search_grid(), self.count_correct)]
        return [
            SearchStage(self.first_grid(), self.count_correct_first),
            SearchStage(self.second_grid(), self.count_correct_second)
        ]

    @torch.no_grad()
    def count_correct_first(self, feats, labels: torch.Tensor,
                            max_elements: int = 2**26) -> torch.Tensor:
        """Stage 1: ``(n_beta, n_alpha)`` counts of Tip-Adapter, the second
        cache off."""
        f, _ = self._two(feats)
        return TipAdapterHead.count_correct(self, f, labels, max_elements)

    @torch.no_grad()
    def count_correct_second(self, feats, labels: torch.Tensor,
                             max_elements: int = 2**26) -> torch.Tensor:
        """Stage 2: ``(n_beta2, n_alpha2)`` counts, the first cache at the
        current ``(beta, alpha)``."""
        f, f2 = self._two(feats)
        self._require_cache()
        grid = self.second_grid()
        base = self.clip_logits(f) + self.alpha * self.cache_logits(f)
        return count_correct_on_grid(
            f2, self.second_cache_keys, self.cache_values, labels,
            grid['beta2'], grid['alpha2'], base_logits=base,
            max_elements=max_elements)

    @torch.no_grad()
    def count_correct(self, feats, labels: torch.Tensor,
                      max_elements: int = 2**26) -> torch.Tensor:
        """Counts over the joint grid, ``(n_beta, n_alpha, n_beta2,
        n_alpha2)``: one Tip-Adapter grid count per ``(beta2, alpha2)``."""
        f, f2 = self._two(feats)
        self._require_cache()
        first, second = self.first_grid(), self.second_grid()
        clip = self.clip_logits(f)
        correct = torch.empty(
            *(len(g) for g in first.values()),
            *(len(g) for g in second.values()), dtype=torch.int64)
        for i, beta2 in enumerate(second['beta2'].tolist()):
            logits2 = cache_logits(f2, self.second_cache_keys,
                                   self.cache_values,
                                   torch.tensor(beta2, device=f2.device))
            for j, alpha2 in enumerate(second['alpha2'].tolist()):
                correct[:, :, i, j] = count_correct_on_grid(
                    f, self.cache_keys, self.cache_values, labels,
                    first['beta'], first['alpha'],
                    base_logits=clip + float(alpha2) * logits2,
                    max_elements=max_elements)
        return correct
