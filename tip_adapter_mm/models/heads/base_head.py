"""What every few-shot head shares: the features contract, fitting on the
support set, and hyperparameters that a search or a fixed recipe sets."""
import hashlib
from collections import OrderedDict
from typing import (Callable, Dict, List, NamedTuple, Optional, Sequence,
                    Tuple, Union)

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmpretrain.models.heads import ClsHead
from mmpretrain.structures import DataSample
from ...evaluation import ranked_labels
from ...structures import Features, check_features

Grid = 'OrderedDict[str, torch.Tensor]'


class SearchStage(NamedTuple):
    """A grid searched in one go, the other hyperparameters held fixed.

    Attributes:
        grid: Values per hyperparameter, outermost first.
        count_correct: ``(feats, labels, params, max_elements) -> counts``
            shaped like ``grid``; ``params`` holds the values of the
            hyperparameters that are not in ``grid``.
        chunked: True: the search gives ``count_correct`` the validation
            features ``chunk_size`` at a time. False: all of them in one
            call, for a count whose cost is in solving the grid (ProKeR),
            which then bounds its own memory by ``max_elements``.
    """
    grid: Grid
    count_correct: Callable[..., torch.Tensor]
    chunked: bool = True


def resize_from_state_dict(module: nn.Module, state_dict: dict, prefix: str,
                           names: Sequence[str]) -> None:
    """Give ``module``'s tensors ``names`` (parameters or buffers whose shape
    depends on the data) the shapes they have in ``state_dict``, so that a
    checkpoint of a fitted module loads into a new one."""
    for name in names:
        value = state_dict.get(prefix + name)
        if value is None:
            continue
        current = getattr(module, name)
        resized = torch.empty_like(value, device=current.device,
                                   memory_format=torch.contiguous_format)
        if isinstance(current, nn.Parameter):
            current.data = resized  # keep the object an optimizer may hold
        else:
            setattr(module, name, resized)


class FewShotHead(ClsHead):
    """Base of the heads of this package.

    **Features.** ``forward`` takes a tuple with one L2-normalised ``(B,
    C_e)`` tensor per visual encoder (``num_feature_sets`` of them); a bare
    tensor is an error, not a silent ``feats[-1]``.

    **Fitting.** :meth:`fit` takes the raw features of ``V`` augmented views
    of the ``S`` few-shot images, one ``(V, S, C_e)`` tensor per encoder, and
    their labels ``(S, )``; each head keeps its own statistics of them
    (:attr:`is_fitted` says whether it has).

    **Hyperparameters** are float64 buffers (saved in checkpoints) declared
    with :meth:`register_hyperparameter`. A head declares the grid a search
    visits (:meth:`search_grid`, :meth:`search_stages`) with a vectorised
    count of correct predictions over it (:meth:`count_correct`), and its
    fixed, validation-free values (:meth:`fixed_hyperparameters`: the
    constructor's). :meth:`set_hyperparameters` sets values by hand;
    :meth:`apply_search` applies a search's result and marks the head as
    searched, so that a search hook does not search it again.

    **Predictions** follow :mod:`tip_adapter_mm.evaluation`'s rule: the
    first maximum of the logits wins; ``pred_score`` is the softmax in
    float64 (which keeps the logits' order).

    Args:
        num_classes (int): N.
        loss (dict): Loss config, as :class:`ClsHead`.
        topk (int | tuple): As :class:`ClsHead`.
        init_cfg (dict, optional): As :class:`ClsHead`.
    """

    #: Visual encoders whose features :meth:`forward` takes.
    num_feature_sets: int = 1
    #: Own tensors whose shape is only known once fitted or loaded.
    dynamic_buffers: Tuple[str, ...] = ()
    #: Names in checkpoints of earlier versions -> names now.
    legacy_names: Dict[str, Tuple[str, ...]] = {}
    #: The method's name in tables (the sweep's rows).
    method_name: str = ''
    #: Whether the head needs CLIP's text classifier (``zero_shot_weights``,
    #: built from the model's text encoder). Heads without it run on any
    #: visual backbone, with or without a text tower.
    uses_text: bool = False
    #: Whether :meth:`forward` takes L2-normalised features (True) or the
    #: encoder's raw features (ProLIP's pre-projection features).
    normalize_inputs: bool = True
    #: Whether the head starts from the visual tower's last projection
    #: (ProLIP): the classifier then gives it with the zero-shot weights
    #: (``set_visual_projection(weight, bias)``).
    uses_visual_projection: bool = False
    #: Whether the head trains inside the image tower (VPT, MaPLe,
    #: CLIP-LoRA): the classifier hands it open_clip's tower
    #: (``set_image_tower(visual)``) and its ``encode_images(images (B, 3,
    #: H, W)) -> (B, C)`` replaces the frozen encoder; ``fit`` then gets
    #: ``view_feats=None`` (the few-shot images are its training set) and
    #: no features of it are stored.
    uses_image_tower: bool = False
    #: Whether what the head learns is independent of the class list
    #: (shared prompts, adapters on the image feature, LoRA), so that a
    #: trained head can be re-prompted with other class names
    #: (:meth:`forget_classes`): base-to-new, cross-dataset.
    class_agnostic: bool = False

    def __init__(self,
                 num_classes: int,
                 loss: dict = dict(type='CrossEntropyLoss', loss_weight=1.0),
                 topk: Union[int, Tuple[int]] = (1, ),
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(loss=loss, topk=topk, init_cfg=init_cfg)
        self.num_classes = int(num_classes)
        if self.num_classes < 1:
            raise ValueError(f'num_classes must be >= 1, got {num_classes}.')
        # Whether the hyperparameters come from a search (saved in
        # checkpoints, so a searched checkpoint is not searched again).
        self.register_buffer('is_searched', torch.tensor(False))
        # SHA-256 of the class names the head was built for (zeros:
        # unknown), saved in checkpoints: a checkpoint tested on other
        # classes is re-prompted or refused (FewShotBuilder).
        self.register_buffer('class_names_digest',
                             torch.zeros(32, dtype=torch.uint8))
        # name -> path of its float64 buffer; name -> constructor value.
        self._hyperparameter_paths: Dict[str, str] = OrderedDict()
        self._fixed_hyperparameters: Dict[str, float] = OrderedDict()

    # -- the class list ------------------------------------------------------
    @staticmethod
    def digest_class_names(class_names: Sequence[str]) -> torch.Tensor:
        """SHA-256 of the class names in label order, ``(32, )`` uint8."""
        digest = hashlib.sha256('\n'.join(class_names).encode()).digest()
        return torch.tensor(list(digest), dtype=torch.uint8)

    def set_class_names(self, class_names: Sequence[str]) -> None:
        """Remember (as a digest) the ``N`` class names the head is built
        for."""
        if len(class_names) != self.num_classes:
            raise ValueError(
                f'{type(self).__name__} has num_classes={self.num_classes} '
                f'but got {len(class_names)} class names.')
        self.class_names_digest.copy_(self.digest_class_names(class_names))

    def built_for(self, class_names: Sequence[str]) -> Optional[bool]:
        """Whether the head was built for ``class_names``; None when it
        does not know (not built yet, or a checkpoint of an earlier
        version)."""
        if not bool(self.class_names_digest.any()):
            return None
        return torch.equal(self.class_names_digest.cpu(),
                           self.digest_class_names(class_names))

    def forget_classes(self, num_classes: int) -> None:
        """Drop what depends on the class list, keep what was learned, and
        take ``num_classes`` classes; the classifier then rebuilds the rest
        from the new names (and the builder refits a head that fits on the
        support set). Only for :attr:`class_agnostic` heads."""
        if not self.class_agnostic:
            raise ValueError(
                f'{type(self).__name__} learns tensors per class: it cannot '
                'be re-prompted with other class names.')
        self.num_classes = int(num_classes)
        self.class_names_digest.zero_()

    # -- features ------------------------------------------------------------
    def check_feats(self, feats: Features) -> Features:
        """``feats`` checked against the contract: a tuple of
        ``num_feature_sets`` tensors ``(B, C_e)``."""
        try:
            return check_features(feats, self.num_feature_sets,
                                  type(self).__name__)
        except ValueError as err:
            if self.num_feature_sets > 1:
                raise ValueError(f'{err} A second visual encoder gives the '
                                 'second: set model.second_backbone.') from err
            raise

    def pre_logits(self, feats: Features) -> Union[torch.Tensor, Features]:
        """The features of the tuple: the tensor itself for one encoder, the
        tuple for several."""
        feats = self.check_feats(feats)
        return feats[0] if self.num_feature_sets == 1 else feats

    def check_views(self, view_feats: Features,
                    labels: torch.Tensor) -> Features:
        """Check :meth:`fit`'s arguments; return the views tuple."""
        view_feats = check_features(view_feats, self.num_feature_sets,
                                    f'{type(self).__name__}.fit', dims=3)
        if labels.dim() != 1 or len(labels) != view_feats[0].shape[1]:
            raise ValueError(
                f'{type(self).__name__}.fit: labels {tuple(labels.shape)} do '
                f'not match the {view_feats[0].shape[1]} images of the '
                f'views {tuple(view_feats[0].shape)}.')
        if len(labels) and (labels.min() < 0
                            or labels.max() >= self.num_classes):
            raise ValueError(
                f'{type(self).__name__}.fit: labels must be in [0, '
                f'{self.num_classes}), got [{int(labels.min())}, '
                f'{int(labels.max())}].')
        return view_feats

    def check_every_class(self, labels: torch.Tensor) -> None:
        """Raise when a class has no few-shot image in ``labels`` ``(S, )``
        (heads that fit a statistic or a weight per class need one)."""
        counts = torch.bincount(labels.long().flatten(),
                                minlength=self.num_classes)
        if (counts == 0).any():
            missing = torch.nonzero(counts == 0).flatten().tolist()
            raise ValueError(f'{type(self).__name__}: classes {missing[:10]} '
                             'have no few-shot image; every class needs one.')

    # -- fitting -------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        """Whether the head holds what it needs from the few-shot set."""
        raise NotImplementedError

    def fit(self, view_feats: Features, labels: torch.Tensor) -> None:
        """Fit on the raw features of ``V`` augmented views of ``S`` few-shot
        images: one ``(V, S, C_e)`` tensor per encoder, labels ``(S, )``."""
        raise NotImplementedError

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError(
                f'{type(self).__name__} is not fitted yet: add '
                'BuildCacheHook to custom_hooks, call fit(), or load a '
                'checkpoint of a fitted model.')

    # -- hyperparameters -----------------------------------------------------
    def register_hyperparameter(self,
                                name: str,
                                value: float,
                                path: Optional[str] = None) -> None:
        """Declare hyperparameter ``name`` with its fixed value ``value``.

        It lives in a float64 scalar buffer: ``self.<name>`` by default, or
        the existing buffer at ``path`` of a component (``'cache.beta'``).
        """
        if path is None:
            self.register_buffer(name,
                                 torch.tensor(float(value),
                                              dtype=torch.float64))
            path = name
        else:
            self.get_buffer(path).fill_(float(value))
        self._hyperparameter_paths[name] = path
        self._fixed_hyperparameters[name] = float(value)

    def hyperparameter(self, name: str) -> torch.Tensor:
        """The buffer of hyperparameter ``name``."""
        if name not in self._hyperparameter_paths:
            raise KeyError(f'{type(self).__name__} has no hyperparameter '
                           f'{name!r}; it has '
                           f'{list(self._hyperparameter_paths)}.')
        return self.get_buffer(self._hyperparameter_paths[name])

    @property
    def hyperparameters(self) -> Dict[str, float]:
        """Current values, e.g. ``{'alpha': 1.17, 'beta': 1.0}``."""
        return OrderedDict((name, float(self.hyperparameter(name)))
                           for name in self._hyperparameter_paths)

    def fixed_hyperparameters(self) -> Dict[str, float]:
        """The validation-free values: those the constructor was given (the
        method's published defaults in the configs)."""
        return OrderedDict(self._fixed_hyperparameters)

    def validation_free_hyperparameters(self) -> Dict[str, float]:
        """The values used when nothing is selected on validation
        (``few_shot_cfg.protocol='none'``): the method's validation-free
        recipe. Defaults to :meth:`fixed_hyperparameters`; a head whose
        recipe depends on the few-shot set (e.g. ``1 / shots``) overrides
        it and may read what :meth:`fit` kept."""
        return self.fixed_hyperparameters()

    def set_hyperparameters(self, **params: float) -> None:
        """Set hyperparameters by hand. The head counts as not searched, so
        a search hook still searches it."""
        for name, value in params.items():
            self.hyperparameter(name).fill_(float(value))
        self.is_searched.fill_(False)

    def apply_search(self, best: Dict[str, float]) -> None:
        """Apply the best point of a search and mark the head searched."""
        self.set_hyperparameters(**best)
        self.is_searched.fill_(True)

    @property
    def searched(self) -> bool:
        return bool(self.is_searched)

    def search_grid(self) -> Grid:
        """Values searched per hyperparameter, outermost first; empty for a
        head with nothing to search."""
        return OrderedDict()

    def search_stages(self) -> List[SearchStage]:
        """The grids a search visits one after the other, each with the
        others' hyperparameters at their best so far: one stage, the whole
        :meth:`search_grid`, unless a head splits it."""
        grid = self.search_grid()
        return [SearchStage(grid, self.count_correct)] if grid else []

    def count_correct(self, feats: Features, labels: torch.Tensor,
                      params: Dict[str, float],
                      max_elements: int = 2**26) -> torch.Tensor:
        """Correct top-1 predictions at every point of the search grid.

        Args:
            feats: L2-normalised features, one ``(M, C_e)`` per encoder.
            labels: ``(M, )`` ground truth.
            params: Values of the hyperparameters that the grid does not
                vary (never read from the head: a search does not change
                the head while it runs).
            max_elements: Bound on the elements of any temporary tensor.

        Returns:
            int64 counts shaped like the grid, e.g. ``(n_beta, n_alpha)``.
        """
        raise NotImplementedError

    # -- predictions ---------------------------------------------------------
    def _get_predictions(self, cls_score: torch.Tensor,
                         data_samples: Optional[List[DataSample]]
                         ) -> List[DataSample]:
        scores = F.softmax(cls_score.double(), dim=1).detach()
        labels = ranked_labels(cls_score.detach(), 1)
        if data_samples is None:
            data_samples = [DataSample() for _ in range(len(scores))]
        for sample, score, label in zip(data_samples, scores, labels):
            sample.set_pred_score(score).set_pred_label(label)
        return data_samples

    # -- checkpoints ---------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints of earlier versions do not know their class names.
        state_dict.setdefault(prefix + 'class_names_digest',
                              torch.zeros(32, dtype=torch.uint8))
        for old, new_names in self.legacy_names.items():
            value = state_dict.pop(prefix + old, None)
            if value is not None:
                for new in new_names:
                    state_dict.setdefault(prefix + new, value)
        resize_from_state_dict(self, state_dict, prefix,
                               self.dynamic_buffers)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
