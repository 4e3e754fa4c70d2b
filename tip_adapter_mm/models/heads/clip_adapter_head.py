"""CLIP-Adapter: a residual bottleneck MLP on the image features."""
import math
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmpretrain.registry import MODELS
from ...structures import Features
from .zero_shot_head import ZeroShotHead


@MODELS.register_module()
class CLIPAdapterHead(ZeroShotHead):
    """CLIP-Adapter (Gao et al., "CLIP-Adapter: Better Vision-Language
    Models with Feature Adapters", IJCV 2023; code gaopengcuhk/CLIP-Adapter)
    with the visual adapter, for L2-normalised features ``f`` ``(B, C)``::

        g(f)   = relu(relu(f @ adapter_down.T) @ adapter_up.T)
        f'     = ratio * g(f) + (1 - ratio) * f
        logits = clip_logit_scale * normalize(f') @ zero_shot_weights

    ``adapter_down`` ``(C // reduction, C)`` and ``adapter_up`` ``(C,
    C // reduction)`` are the two bias-free linear layers of the official
    code (each followed by a ReLU), trained with cross-entropy on these
    logits; CLIP's text classifier stays fixed. The official code applies
    the adapter to the raw image features; since ``g`` is positively
    homogeneous (bias-free linear maps and ReLUs) and ``f'`` is normalised,
    normalised inputs give the same logits and the same gradients.

    :meth:`fit` creates the layers once the channels ``C`` are known
    (PyTorch's default initialisation of ``nn.Linear``); nothing else is
    taken from the few-shot views, which are the training set.

    Args:
        num_classes (int): N.
        ratio (float): Residual ratio: the weight of the adapted features
            (0.2 in the official code).
        reduction (int): Bottleneck width ``C // reduction`` (4).
        clip_logit_scale, loss, topk, init_cfg: As :class:`ZeroShotHead`.
    """

    dynamic_buffers = ZeroShotHead.dynamic_buffers + ('adapter_down',
                                                      'adapter_up')
    method_name = 'CLIP-Adapter'
    uses_text = True

    def __init__(self,
                 num_classes: int,
                 ratio: float = 0.2,
                 reduction: int = 4,
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
        if not 0.0 <= float(ratio) <= 1.0:
            raise ValueError(f'CLIPAdapterHead: ratio must be in [0, 1], '
                             f'got {ratio}.')
        if int(reduction) < 1:
            raise ValueError(f'CLIPAdapterHead: reduction must be >= 1, '
                             f'got {reduction}.')
        self.reduction = int(reduction)
        # A buffer: a checkpoint keeps the ratio it was trained with.
        self.register_buffer('ratio',
                             torch.tensor(float(ratio), dtype=torch.float64))
        self.adapter_down = nn.Parameter(torch.zeros(0, 0))
        self.adapter_up = nn.Parameter(torch.zeros(0, 0))

    @property
    def is_fitted(self) -> bool:
        return self.adapter_down.numel() > 0

    def fit(self, view_feats: Features, labels: torch.Tensor) -> None:
        """Create the adapter for the channels ``C`` of the views ``((V, S,
        C), )``, initialised as ``nn.Linear`` layers are."""
        views, = self.check_views(view_feats, labels)
        channels = views.shape[-1]
        hidden = channels // self.reduction
        if hidden < 1:
            raise ValueError(
                f'CLIPAdapterHead.fit: {channels} channels leave no '
                f'bottleneck with reduction={self.reduction}.')
        device = self.is_searched.device
        with torch.no_grad():
            self.adapter_down.data = _linear_weight(hidden, channels, device)
            self.adapter_up.data = _linear_weight(channels, hidden, device)

    def adapted(self, feats: torch.Tensor) -> torch.Tensor:
        """``(B, C) -> (B, C)``: ``f'``, before its normalisation."""
        self._require_fitted()
        hidden = F.relu(feats @ self.adapter_down.t())
        residual = F.relu(hidden @ self.adapter_up.t())
        ratio = self.ratio.to(feats.dtype)
        return ratio * residual + (1 - ratio) * feats

    def forward(self, feats: Features) -> torch.Tensor:
        """CLIP-Adapter logits ``(B, N)``."""
        f = self.pre_logits(feats)
        return self.clip_logits(F.normalize(self.adapted(f), dim=-1))


def _linear_weight(out_features: int, in_features: int,
                   device: torch.device) -> torch.Tensor:
    """A weight ``(out, in)`` initialised as ``nn.Linear`` does (Kaiming
    uniform with ``a = sqrt(5)``: bound ``1 / sqrt(in)``)."""
    weight = torch.empty(out_features, in_features, device=device)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    return weight
