"""TaskRes: a learned residual added to CLIP's text classifier."""
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmpretrain.registry import MODELS
from ...structures import Features
from .text_prototype_head import TextPrototypeHead


@MODELS.register_module()
class TaskResHead(TextPrototypeHead):
    """TaskRes (Yu et al., "Task Residual for Tuning Vision-Language
    Models", CVPR 2023; code geekyutao/TaskRes), regular base, for
    L2-normalised features ``f`` ``(B, C)``::

        classifier = text_base + residual_scale * residual        (C, N)
        logits     = clip_logit_scale * f @ normalize(classifier)

    with each column of the classifier L2-normalised, as the official code
    normalises the tuned text features. ``text_base`` is CLIP's text
    classifier (:class:`TextPrototypeHead`: the raw text features when
    ``text_norms`` is set); ``residual`` ``(C, N)`` is the task residual,
    zero at the start (:meth:`fit`), the only trained tensor, learned with
    cross-entropy on these logits. ``residual_scale`` is fixed (the
    official scripts: 0.5, 1.0 for Flowers102).

    Args:
        num_classes (int): N.
        residual_scale (float): ``alpha``, the scale of the residual.
        clip_logit_scale, loss, topk, init_cfg: As :class:`ZeroShotHead`.
    """

    dynamic_buffers = TextPrototypeHead.dynamic_buffers + ('residual', )
    method_name = 'TaskRes'

    def __init__(self,
                 num_classes: int,
                 residual_scale: float = 0.5,
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
        # A buffer: a checkpoint keeps the scale it was trained with.
        self.register_buffer(
            'residual_scale',
            torch.tensor(float(residual_scale), dtype=torch.float64))
        self.residual = nn.Parameter(torch.zeros(0, self.num_classes))

    @property
    def is_fitted(self) -> bool:
        return self.residual.numel() > 0

    def fit(self, view_feats: Features, labels: torch.Tensor) -> None:
        """Start the residual at zero, shaped like the text classifier; the
        views ``((V, S, C), )`` are only checked (they are the training
        set)."""
        self._check_channels(view_feats, labels)
        with torch.no_grad():
            self.residual.data = torch.zeros_like(self.text_base())

    def classifier(self) -> torch.Tensor:
        """The tuned classifier ``(C, N)``, columns L2-normalised."""
        self._require_fitted()
        scale = self.residual_scale.to(self.residual.dtype)
        return F.normalize(self.text_base() + scale * self.residual, dim=0)

    def forward(self, feats: Features) -> torch.Tensor:
        """TaskRes logits ``(B, N)``."""
        f = self.pre_logits(feats)
        return self.clip_logit_scale * f @ self.classifier()
