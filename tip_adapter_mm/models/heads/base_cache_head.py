"""Shared state of heads that classify with a few-shot key-value cache."""
from collections import OrderedDict
from typing import Callable, Dict, List, NamedTuple, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmpretrain.models.heads import ClsHead


class SearchStage(NamedTuple):
    """A grid searched in one go, the other hyperparameters held fixed.

    Attributes:
        grid: Values per hyperparameter, outermost first.
        count_correct: ``(feats, labels, max_elements) -> counts`` shaped
            like ``grid``.
    """
    grid: 'OrderedDict[str, torch.Tensor]'
    count_correct: Callable[..., torch.Tensor]


class BaseCacheHead(ClsHead):
    """Base of cache-model heads (Tip-Adapter and its siblings).

    Holds the cache built by :class:`BuildCacheHook` and the
    hyperparameters found by :class:`HyperparameterSearchHook`. A subclass
    defines the logits (``forward``), its search grid
    (:meth:`search_grid`) and a vectorised count of correct predictions
    over that grid (:meth:`count_correct`); nothing else needs to know which
    head it is.

    Buffers (empty until built; resized when a checkpoint is loaded):
        cache_keys ``(NK, C)``: L2-normalised few-shot features; a learnable
            parameter (the bias-free linear layer of Tip-Adapter-F) when
            ``train_cache_keys`` is True.
        cache_values ``(NK, N)``: one-hot labels of the keys.

    Args:
        num_classes (int): N.
        train_cache_keys (bool): Make the keys learnable (Tip-Adapter-F).
            Values and everything else stay frozen.
        loss (dict): Loss config, as :class:`ClsHead`.
        topk (int | tuple): As :class:`ClsHead`.
        init_cfg (dict, optional): As :class:`ClsHead`.
    """

    #: Buffers whose shape is only known once built or loaded.
    dynamic_buffers: Tuple[str, ...] = ('cache_keys', 'cache_values')

    def __init__(self,
                 num_classes: int,
                 train_cache_keys: bool = False,
                 loss: dict = dict(type='CrossEntropyLoss', loss_weight=1.0),
                 topk: Union[int, Tuple[int]] = (1, ),
                 init_cfg: Union[dict, None] = None) -> None:
        super().__init__(loss=loss, topk=topk, init_cfg=init_cfg)
        self.num_classes = int(num_classes)
        self.train_cache_keys = bool(train_cache_keys)
        self.register_cache_keys('cache_keys')
        self.register_buffer('cache_values', torch.zeros(0, self.num_classes))
        # Whether the hyperparameters were searched (saved in checkpoints).
        self.register_buffer('is_searched', torch.tensor(False))

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
        self.assign_cache_keys('cache_keys', cache_keys)
        self.cache_values = cache_values.detach().float().to(
            self.cache_values.device)

    def register_cache_keys(self, name: str) -> None:
        """An empty ``(0, 0)`` key tensor ``name``: a learnable parameter
        when ``train_cache_keys`` (Tip-Adapter-F), else a buffer."""
        if self.train_cache_keys:
            setattr(self, name, nn.Parameter(torch.zeros(0, 0)))
        else:
            self.register_buffer(name, torch.zeros(0, 0))

    def assign_cache_keys(self, name: str, keys: torch.Tensor) -> None:
        """Store keys ``(NK, C)`` in ``name`` on the head's device."""
        keys = keys.detach().float().to(
            self.cache_values.device).contiguous()
        current = getattr(self, name)
        if isinstance(current, nn.Parameter):
            # Keep the parameter object: an optimizer may already hold it.
            current.data = keys
        else:
            setattr(self, name, keys)

    def build_cache(self, view_feats: torch.Tensor,
                    labels: torch.Tensor) -> None:
        """Build the cache from the encoded augmented views.

        Tip-Adapter's cache (SPEC section 1): keys are the raw features of
        the ``V`` views averaged per image, then L2-normalised; values are
        one-hot labels. Sibling heads override this to fit other statistics
        of the same views (GDA, APE).

        Args:
            view_feats: Raw (unnormalised) features ``(V, S, C)`` of ``V``
                augmented views of ``S`` few-shot images.
            labels: ``(S,)`` labels of the images.
        """
        cache_keys = F.normalize(view_feats.float().mean(dim=0), dim=-1)
        cache_values = F.one_hot(labels.long(), self.num_classes).float()
        self.set_cache(cache_keys, cache_values)

    def _require_cache(self) -> None:
        if not self.has_cache:
            raise RuntimeError(
                f'{type(self).__name__} has no cache yet: add BuildCacheHook '
                'to custom_hooks, or load a checkpoint that holds one.')

    # -- hyperparameters -----------------------------------------------------
    def register_hyperparameter(self, name: str, value: float) -> None:
        """A scalar kept as a float64 buffer, so that it is saved in and
        loaded from checkpoints (and broadcast like any buffer)."""
        self.register_buffer(name, torch.tensor(float(value),
                                                dtype=torch.float64))

    @property
    def searched(self) -> bool:
        return bool(self.is_searched)

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
            getattr(self, name).fill_(float(value))
        self.is_searched.fill_(bool(searched))

    def search_grid(self) -> 'OrderedDict[str, torch.Tensor]':
        """Values searched per hyperparameter, outermost first."""
        raise NotImplementedError

    def search_stages(self) -> List[SearchStage]:
        """The grids :func:`grid_search` visits one after the other, each
        with the hyperparameters of the others at their best so far. One
        stage, the whole :meth:`search_grid`, unless a head splits it."""
        return [SearchStage(self.search_grid(), self.count_correct)]

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
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Cache shapes depend on the data; take them from the checkpoint.
        for name in self.dynamic_buffers:
            value = state_dict.get(prefix + name)
            if value is None:
                continue
            if name in self._parameters:
                param = self._parameters[name]
                param.data = torch.empty_like(value, device=param.device)
            else:
                self._buffers[name] = torch.empty_like(
                    value, device=self._buffers[name].device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
