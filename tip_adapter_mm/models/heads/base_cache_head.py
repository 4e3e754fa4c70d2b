"""Shared state of heads that classify with a few-shot key-value cache."""
from collections import OrderedDict
from typing import Any, Dict, Tuple, Union

import torch

from mmpretrain.models.heads import ClsHead


class BaseCacheHead(ClsHead):
    """Base of cache-model heads (Tip-Adapter and its siblings).

    Holds the cache built by :class:`BuildCacheHook` and the
    hyperparameters found by :class:`HyperparameterSearchHook`. A subclass
    defines the logits (``forward``), its search grid
    (:meth:`search_grid`) and a vectorised count of correct predictions
    over that grid (:meth:`count_correct`); nothing else needs to know which
    head it is.

    Buffers (empty until built; resized when a checkpoint is loaded):
        cache_keys ``(NK, C)``: L2-normalised few-shot features.
        cache_values ``(NK, N)``: one-hot labels of the keys.

    Args:
        num_classes (int): N.
        loss (dict): Loss config, as :class:`ClsHead`.
        topk (int | tuple): As :class:`ClsHead`.
        init_cfg (dict, optional): As :class:`ClsHead`.
    """

    #: Buffers whose shape is only known once built or loaded.
    dynamic_buffers: Tuple[str, ...] = ('cache_keys', 'cache_values')

    def __init__(self,
                 num_classes: int,
                 loss: dict = dict(type='CrossEntropyLoss', loss_weight=1.0),
                 topk: Union[int, Tuple[int]] = (1, ),
                 init_cfg: Union[dict, None] = None) -> None:
        super().__init__(loss=loss, topk=topk, init_cfg=init_cfg)
        self.num_classes = int(num_classes)
        self.register_buffer('cache_keys', torch.zeros(0, 0))
        self.register_buffer('cache_values', torch.zeros(0, self.num_classes))
        self.searched = False

    # -- cache ---------------------------------------------------------------
    @property
    def has_cache(self) -> bool:
        return self.cache_keys.numel() > 0

    def set_cache(self, cache_keys: torch.Tensor,
                  cache_values: torch.Tensor) -> None:
        """Store keys ``(NK, C)`` and values ``(NK, N)``."""
        if cache_keys.dim() != 2 or cache_values.shape != (
                cache_keys.shape[0], self.num_classes):
            raise ValueError(
                f'Expected cache_keys (NK, C) and cache_values (NK, '
                f'{self.num_classes}), got {tuple(cache_keys.shape)} and '
                f'{tuple(cache_values.shape)}.')
        device = self.cache_values.device
        self.cache_keys = cache_keys.detach().float().to(device).contiguous()
        self.cache_values = cache_values.detach().float().to(device)

    def _require_cache(self) -> None:
        if not self.has_cache:
            raise RuntimeError(
                f'{type(self).__name__} has no cache yet: add BuildCacheHook '
                'to custom_hooks, or load a checkpoint that holds one.')

    # -- hyperparameters -----------------------------------------------------
    @property
    def hyperparameters(self) -> Dict[str, float]:
        """The searched hyperparameters, e.g. ``{'beta': 1., 'alpha': 1.}``."""
        return OrderedDict((name, float(getattr(self, name)))
                           for name in self.search_grid())

    def set_hyperparameters(self, searched: bool = True,
                            **params: float) -> None:
        unknown = set(params) - set(self.search_grid())
        if unknown:
            raise KeyError(f'{type(self).__name__} has no hyperparameters '
                           f'{sorted(unknown)}; it has '
                           f'{list(self.search_grid())}.')
        for name, value in params.items():
            setattr(self, name, float(value))
        self.searched = searched

    def search_grid(self) -> 'OrderedDict[str, torch.Tensor]':
        """Values searched per hyperparameter, outermost first."""
        raise NotImplementedError

    def count_correct(self, feats: torch.Tensor, labels: torch.Tensor,
                      max_elements: int = 2**26) -> torch.Tensor:
        """Correct top-1 predictions for every point of the search grid.

        Args:
            feats: L2-normalised features ``(M, C)``.
            labels: ``(M,)`` ground truth.
            max_elements: Bound on the elements of any temporary tensor.

        Returns:
            int64 counts shaped like the grid, e.g. ``(n_beta, n_alpha)``.
        """
        raise NotImplementedError

    # -- checkpoints ---------------------------------------------------------
    def get_extra_state(self) -> Dict[str, Any]:
        return dict(hyperparameters=dict(self.hyperparameters),
                    searched=self.searched)

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        self.set_hyperparameters(
            searched=bool(state['searched']), **state['hyperparameters'])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Cache shapes depend on the data; take them from the checkpoint.
        for name in self.dynamic_buffers:
            value = state_dict.get(prefix + name)
            if value is not None:
                self._buffers[name] = torch.empty_like(
                    value, device=self._buffers[name].device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
