"""ProLIP: fine-tune CLIP's last visual projection, kept near its start."""
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample
from ...structures import Features
from .zero_shot_head import ZeroShotHead

#: The official code's grid for its few-shot-validation setting
#: (``search_lr``): every (lr, lambda) pair is a separate training, scored
#: on K-shot validation (``few_shot_cfg.protocol='kshot_val'``), e.g. one
#: run per pair with ``--cfg-options optim_wrapper.optimizer.lr=...
#: model.head.lambda_reg=...``. Nothing in one run searches it.
FEW_SHOT_VALIDATION_GRID = OrderedDict(
    lr=(1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8),
    lambda_reg=(10.0, 1.0, 0.1, 0.01, 0.001, 0.0001, 0.0))


@MODELS.register_module()
class ProLIPHead(ZeroShotHead):
    """ProLIP (Fahes et al., "CLIP's Visual Embedding Projector is a
    Few-shot Cornucopia", arXiv 2410.05270) for the RAW features ``h``
    ``(B, D_pre)`` that the visual tower has before its last projection::

        f      = normalize(h @ proj_weight + proj_bias)        # (B, D)
        logits = clip_logit_scale * f @ zero_shot_weights      # (B, N)
        loss   = cross_entropy(logits, y)
                 + lambda_reg * ||proj_weight - initial_proj_weight||_F^2

    ``proj_weight`` ``(D_pre, D)`` is the only learnable tensor. It starts
    at the tower's own projection ``initial_proj_weight`` (a buffer), so
    before training the head is zero-shot CLIP exactly. ``proj_bias`` is the
    projection's bias (``attnpool.c_proj.bias`` of the ResNets; the ViTs
    have none): fixed, as in the official code, unless ``train_bias``. The
    regulariser is the squared Frobenius norm (a sum over elements, as the
    paper and the official code's ``MSELoss(reduction='sum')``).

    The classifier gives the projection (:meth:`set_visual_projection`,
    called with the zero-shot weights: ``uses_visual_projection``); the
    features must come from the same tower, stopped before that projection
    (e.g. ``OpenCLIPVisualBackbone(output='pre_projection')``), and are not
    normalised (``normalize_inputs = False``).

    **Fit** keeps ``N``, the shots per class of the few-shot set (the most
    images of any class); training then visits one stored augmented view of
    every image per epoch, full batch (``configs/_base_/schedules/
    prolip.py``). Nothing is searched after training: ``lambda_reg`` acts
    on training only. The paper's few-shot-validation setting picks (lr,
    lambda) by training once per point of :data:`FEW_SHOT_VALIDATION_GRID`
    (a sweep); its validation-free setting, the default here, takes
    ``lambda = 1 / N``.

    Args:
        num_classes (int): N classes.
        lambda_reg (float, optional): Weight of the regulariser. None (the
            default): ``1 / N`` with N the shots, set by :meth:`fit` (the
            paper's validation-free choice, official ``lambda_funct_1_N``).
        train_bias (bool): Also learn the bias (not in the official code);
            it is then regularised the same way.
        clip_logit_scale (float): Logit scale, 100 as in the official code.
        loss, topk, init_cfg: As :class:`ZeroShotHead`.
    """

    dynamic_buffers = ('zero_shot_weights', 'initial_proj_weight',
                       'initial_proj_bias', 'proj_weight', 'proj_bias')
    method_name = 'ProLIP'
    uses_text = True
    normalize_inputs = False
    #: The classifier gives the visual tower's last projection
    #: (``CLIPFewShotClassifier.give_head_visual_projection``).
    uses_visual_projection = True

    def __init__(self,
                 num_classes: int,
                 lambda_reg: Optional[float] = None,
                 train_bias: bool = False,
                 clip_logit_scale: float = 100.0,
                 loss: dict = dict(type='CrossEntropyLoss', loss_weight=1.0),
                 topk: Union[int, Tuple[int]] = (1, ),
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(
            num_classes,
            clip_logit_scale=clip_logit_scale,
            loss=loss,
            topk=topk,
            init_cfg=init_cfg)
        if lambda_reg is not None and float(lambda_reg) < 0:
            raise ValueError(f'ProLIPHead: lambda_reg must be >= 0 or None '
                             f'(1 / shots), got {lambda_reg}.')
        #: Whether lambda is 1 / N, set by fit (lambda_reg=None).
        self.lambda_from_shots = lambda_reg is None
        self.register_hyperparameter(
            'lambda_reg', 0.0 if lambda_reg is None else lambda_reg)
        self.train_bias = bool(train_bias)
        self.register_buffer('initial_proj_weight', torch.zeros(0, 0))
        self.register_buffer('initial_proj_bias', torch.zeros(0))
        self.proj_weight = nn.Parameter(torch.zeros(0, 0))
        if self.train_bias:
            self.proj_bias = nn.Parameter(torch.zeros(0))
        else:
            self.register_buffer('proj_bias', torch.zeros(0))
        # N, the shots per class of the few-shot set (0: not fitted).
        self.register_buffer('num_shots', torch.tensor(0))

    # -- the projection ------------------------------------------------------
    @property
    def has_visual_projection(self) -> bool:
        return self.initial_proj_weight.numel() > 0

    @property
    def has_bias(self) -> bool:
        return self.initial_proj_bias.numel() > 0

    def set_visual_projection(self, weight: torch.Tensor,
                              bias: Optional[torch.Tensor] = None) -> None:
        """Start from the tower's last projection: weight ``(D_pre, D)``,
        bias ``(D, )`` or None. Resets the learnable copy to it."""
        if weight.dim() != 2:
            raise ValueError(f'ProLIPHead.set_visual_projection: weight must '
                             f'be (D_pre, D), got {tuple(weight.shape)}.')
        if bias is not None and tuple(bias.shape) != (weight.shape[1], ):
            raise ValueError(
                f'ProLIPHead.set_visual_projection: bias must be '
                f'({weight.shape[1]}, ) for a weight '
                f'{tuple(weight.shape)}, got {tuple(bias.shape)}.')
        if (self.has_zero_shot_weights
                and self.zero_shot_weights.shape[0] != weight.shape[1]):
            raise ValueError(
                f'ProLIPHead: the projection maps to {weight.shape[1]} '
                f'channels but zero_shot_weights are '
                f'{tuple(self.zero_shot_weights.shape)}: the visual and '
                'text towers must be the same CLIP model.')
        device = self.is_searched.device
        weight = weight.detach().float().to(device).contiguous()
        bias = (torch.zeros(0, device=device) if bias is None else
                bias.detach().float().to(device).contiguous())
        self.initial_proj_weight = weight.clone()
        self.initial_proj_bias = bias.clone()
        self.proj_weight.data = weight.clone()  # the object an optimizer
        if self.train_bias:                      # may hold stays
            self.proj_bias.data = bias.clone()
        else:
            self.proj_bias = bias.clone()

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """``(B, D_pre) -> (B, D)``: the learnable projection, unnormalised."""
        if not self.has_visual_projection:
            raise RuntimeError(
                'ProLIPHead has no visual projection yet: the classifier '
                'gives it with the zero-shot weights (BuildCacheHook), '
                'set_visual_projection() sets it, or a checkpoint holds it.')
        if h.shape[-1] != self.proj_weight.shape[0]:
            raise ValueError(
                f'ProLIPHead takes the {self.proj_weight.shape[0]}-channel '
                f'features from before the projection, got {h.shape[-1]} '
                'channels: set the tower to its pre-projection output (e.g. '
                "model.backbone.output='pre_projection').")
        out = h @ self.proj_weight
        return out + self.proj_bias if self.has_bias else out

    def regularization(self) -> torch.Tensor:
        """``||proj_weight - initial_proj_weight||_F^2`` (+ the same for the
        bias when it is learnt): a scalar."""
        reg = (self.proj_weight - self.initial_proj_weight).pow(2).sum()
        if self.train_bias and self.has_bias:
            reg = reg + (self.proj_bias - self.initial_proj_bias).pow(2).sum()
        return reg

    # -- fit -----------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self.has_visual_projection and int(self.num_shots) > 0

    def fit(self, view_feats: Features, labels: torch.Tensor) -> None:
        """Keep N, the shots per class, from the raw pre-projection views
        ``((V, S, D_pre), )`` and labels ``(S, )``; with ``lambda_reg=None``
        set lambda to ``1 / N``. Training is the runner's."""
        views, = self.check_views(view_feats, labels)
        self.project(views[0, :1])  # checks the projection and the width
        shots = int(torch.bincount(labels.long()).max()) if len(labels) else 0
        if shots < 1:
            raise ValueError('ProLIPHead.fit: the few-shot set is empty.')
        self.num_shots.fill_(shots)
        if self.lambda_from_shots:
            self.register_hyperparameter('lambda_reg', 1.0 / shots,
                                         path='lambda_reg')

    def validation_free_hyperparameters(self) -> Dict[str, float]:
        """lambda as training used it: ``1 / N`` (the paper's
        validation-free recipe) unless ``lambda_reg`` was given."""
        if self.lambda_from_shots and int(self.num_shots) > 0:
            return OrderedDict(lambda_reg=1.0 / int(self.num_shots))
        return self.fixed_hyperparameters()

    # -- logits and loss -----------------------------------------------------
    def forward(self, feats: Features) -> torch.Tensor:
        """ProLIP logits ``(B, N)`` of raw pre-projection features."""
        f = F.normalize(self.project(self.pre_logits(feats)), dim=-1)
        return self.clip_logits(f)

    def loss(self, feats: Features, data_samples: List[DataSample],
             **kwargs) -> dict:
        """Cross-entropy (``loss``) and the weighted regulariser
        (``loss_reg``); MMEngine sums them."""
        losses = super().loss(feats, data_samples, **kwargs)
        lam = self.hyperparameter('lambda_reg').to(self.proj_weight.dtype)
        losses['loss_reg'] = lam * self.regularization()
        return losses
