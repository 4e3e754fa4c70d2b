"""Nearest class mean: the smallest training-free few-shot head."""
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

from mmpretrain.registry import MODELS
from ...structures import Features
from .base_head import FewShotHead


@MODELS.register_module()
class NCMHead(FewShotHead):
    """Nearest class mean (Mensink et al., TPAMI 2013) on L2-normalised
    features ``f`` ``(B, C)`` of any backbone, with no text tower::

        class_means = normalize(mean of the class's normalised views)  # (N, C)
        logits      = logit_scale * f @ class_means.T

    Every augmented view of every few-shot image is a sample of its class.
    Nothing is searched: the prediction is the class whose mean is closest
    in cosine similarity (``logit_scale`` only scales the scores).

    Args:
        num_classes (int): N.
        logit_scale (float): Scale of the cosine similarities.
        loss, topk, init_cfg: As :class:`FewShotHead`.
    """

    dynamic_buffers = ('class_means', )
    method_name = 'NCM'

    def __init__(self,
                 num_classes: int,
                 logit_scale: float = 100.0,
                 loss: dict = dict(type='CrossEntropyLoss', loss_weight=1.0),
                 topk: Union[int, Tuple[int]] = (1, ),
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(num_classes, loss=loss, topk=topk, init_cfg=init_cfg)
        self.logit_scale = float(logit_scale)
        self.register_buffer('class_means', torch.zeros(0, 0))

    @property
    def is_fitted(self) -> bool:
        return self.class_means.numel() > 0

    @torch.no_grad()
    def fit(self, view_feats: Features, labels: torch.Tensor) -> None:
        """Class means of the normalised views ``((V, S, C), )``."""
        views, = self.check_views(view_feats, labels)
        vecs = F.normalize(views.float(), dim=-1).mean(dim=0)  # (S, C)
        one_hot = F.one_hot(labels.long(), self.num_classes).float()
        self.check_every_class(labels)
        self.class_means = F.normalize(one_hot.t() @ vecs, dim=-1).to(
            self.is_searched.device)

    def forward(self, feats: Features) -> torch.Tensor:
        """Scaled cosine similarities to the class means ``(B, N)``."""
        self._require_fitted()
        return self.logit_scale * self.pre_logits(feats) @ \
            self.class_means.t()
