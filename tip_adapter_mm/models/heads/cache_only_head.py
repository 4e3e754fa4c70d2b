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

#: ``beta * spread`` reached at the top of the ``'auto'`` grid.
AUTO_REACH = 10.0
#: The top of the ``'auto'`` grid where the keys have no spread.
AUTO_MIN_SCALE = 7.0
#: Keys sampled (evenly) to measure the spread of the affinities.
AUTO_MAX_KEYS = 2048


@MODELS.register_module()
class CacheOnlyHead(FewShotHead):
    """Tip-Adapter's cache term without zero-shot CLIP, for L2-normalised
    features ``f`` ``(B, C)`` of any backbone::

        logits = alpha * exp(-beta * (1 - f @ cache.keys.T)) @ cache.values

    A positive ``alpha`` does not change the prediction, so only ``beta``
    is searched; ``alpha`` scales the logits that the Tip-Adapter-F loss
    sees (a temperature).

    **The default beta grid fits the features.** What beta does depends on
    how spread the distances ``d = 1 - f @ k`` are: two keys whose
    distances differ by ``Δd`` weigh ``exp(beta * Δd)`` times apart, so a
    grid fitted to CLIP's features (Tip-Adapter's ``[0.1, 7)``) is too
    narrow for features whose distances are more concentrated (e.g. an
    ImageNet ResNet's non-negative pooled features: the best beta sat on
    the grid's top edge, and a wider grid gained 2.5 points). With
    ``search_scale='auto'`` the grid is ``search_step`` points spaced
    geometrically (the same relative resolution at every scale) from 0.1
    to ``U = 10 / s``, where ``s`` is the standard deviation of the
    distances between the cache keys (off the diagonal): at ``U`` keys one
    ``s`` apart weigh ``e^10`` times apart, which is the nearest-key
    classifier for any practical purpose, so the useful range is inside
    the grid. Distances lie in ``[0, 2]``, so ``s <= 1`` and ``U >= 10``:
    Tip-Adapter's CLIP range is always inside. ``U`` is computed from the
    keys (the fitted or loaded cache), so a checkpoint searches the same
    grid again.

    Args:
        num_classes (int): N.
        alpha (float): Scale of the logits (fixed, not searched).
        beta (float): Sharpness of the affinities: the fixed value.
        search_scale (float | str): ``'auto'`` (default): the beta grid is
            fitted to the features (:meth:`auto_search_scale`); a number:
            Tip-Adapter's linear grid ``[0.1, search_scale)``.
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
                 search_scale: Union[float, str] = 'auto',
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
        if search_scale != 'auto' and not (
                isinstance(search_scale, (int, float))
                and search_scale > 0.1):
            raise ValueError(
                "CacheOnlyHead: search_scale must be 'auto' or a number "
                f'above 0.1 (the grid starts there), got {search_scale!r}.')
        self.search_scale = (search_scale if search_scale == 'auto' else
                             float(search_scale))
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

    @torch.no_grad()
    def auto_search_scale(self) -> float:
        """``10 / s``, ``s`` the standard deviation of ``1 - k_i @ k_j``
        over pairs ``i != j`` of the cache keys (at most ``AUTO_MAX_KEYS``
        of them, evenly spaced); 7 when ``s`` is 0, or there are fewer
        than two keys (an unfitted head: its grid has the same number of
        points)."""
        keys = self.cache.keys.detach().double()
        if len(keys) > AUTO_MAX_KEYS:
            keys = keys[torch.linspace(0, len(keys) - 1, AUTO_MAX_KEYS,
                                       device=keys.device).long()]
        if len(keys) < 2:
            return AUTO_MIN_SCALE
        dist = 1 - keys @ keys.t()
        off = dist[~torch.eye(len(keys), dtype=torch.bool,
                              device=keys.device)]
        spread = float(off.std(unbiased=False))
        if spread <= 0:
            return AUTO_MIN_SCALE
        return AUTO_REACH / spread

    def search_grid(self) -> 'OrderedDict[str, torch.Tensor]':
        """``beta``: the ``'auto'`` geometric grid ``[0.1, U]`` (see the
        class), or Tip-Adapter's linear grid ``[0.1, search_scale)``."""
        if self.search_scale == 'auto':
            top = self.auto_search_scale()
            return OrderedDict(beta=torch.logspace(
                -1.0, float(torch.log10(torch.tensor(top))),
                self.search_step, dtype=torch.float64))
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
