"""CLAP: a linear probe held near the zero-shot prototypes, per class."""
from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample
from ...structures import Features
from .text_prototype_head import TextPrototypeHead


@MODELS.register_module()
class CLAPHead(TextPrototypeHead):
    """CLAP, CLass-Adaptive linear Probe (Silva-Rodriguez et al., "A Closer
    Look at the Few-Shot Adaptation of Large Vision-Language Models", CVPR
    2024; code jusiro/CLAP), for L2-normalised features ``f`` ``(B, C)``::

        logits = clip_logit_scale * f @ normalize(prototypes)
        loss   = cross_entropy(logits, y)
                 + mean_c(constraint_weights_c * ||w_c - t_c||^2)

    ``prototypes`` ``(C, N)`` (columns ``w_c``) are the only trained tensor;
    they start at the text prototypes ``t_c`` (``text_base``,
    :class:`TextPrototypeHead`: the raw text features when ``text_norms`` is
    set), and the penalty holds each near its start. Its weight for class
    ``c`` is the zero-shot softmax probability of class ``c`` averaged over
    the support views of that class (:meth:`fit`: every augmented view
    L2-normalised on its own, all ``V * S`` of them), computed once and
    fixed: classes that zero-shot CLIP already gets right stay close to
    their text prototype. This is the official code's ``l2`` constraint
    (the one its scripts and the paper's tables use); its optional
    ``adaptative`` variant, which updates the weights after each epoch with
    an augmented-Lagrangian rule, is not implemented.

    Args:
        num_classes (int): N.
        clip_logit_scale, loss, topk, init_cfg: As :class:`ZeroShotHead`.
    """

    dynamic_buffers = TextPrototypeHead.dynamic_buffers + (
        'prototypes', 'constraint_weights')
    method_name = 'CLAP'

    def __init__(self,
                 num_classes: int,
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
        self.prototypes = nn.Parameter(torch.zeros(0, self.num_classes))
        self.register_buffer('constraint_weights', torch.zeros(0))

    @property
    def is_fitted(self) -> bool:
        return self.prototypes.numel() > 0

    @torch.no_grad()
    def fit(self, view_feats: Features, labels: torch.Tensor) -> None:
        """Start the prototypes at the text prototypes and fix the
        constraint weights from zero-shot CLIP on every view.

        Args:
            view_feats: Raw features ``((V, S, C), )`` of ``V`` views of
                ``S`` images.
            labels: ``(S, )``.
        """
        views = self._check_channels(view_feats, labels)
        num_views, _, channels = views.shape
        base = self.text_base()
        vecs = F.normalize(
            views.reshape(-1, channels).to(base.device, torch.float64),
            dim=-1)
        targets = labels.to(base.device).long().repeat(num_views)
        counts = torch.bincount(targets, minlength=self.num_classes)
        self.check_every_class(labels)
        probs = torch.softmax(
            self.clip_logit_scale * vecs @ self.zero_shot_weights.double(),
            dim=-1)  # (M, N)
        own = probs.gather(1, targets[:, None]).squeeze(1)  # p(y_i | x_i)
        weights = torch.zeros(self.num_classes, dtype=torch.float64,
                              device=base.device).index_add_(0, targets, own)
        self.constraint_weights = (weights / counts).float()
        self.prototypes.data = base.detach().clone()

    def constraint(self) -> torch.Tensor:
        """``mean_c(constraint_weights_c * ||w_c - t_c||^2)``: the penalty
        (a scalar with a gradient for ``prototypes``)."""
        self._require_fitted()
        distances = (self.prototypes - self.text_base()).pow(2).sum(dim=0)
        return (self.constraint_weights * distances).mean()

    def forward(self, feats: Features) -> torch.Tensor:
        """CLAP logits ``(B, N)``."""
        self._require_fitted()
        f = self.pre_logits(feats)
        return self.clip_logit_scale * f @ F.normalize(self.prototypes, dim=0)

    def loss(self, feats: Features, data_samples: List[DataSample],
             **kwargs) -> dict:
        """Cross-entropy (``loss``) and the class-adaptive penalty
        (``loss_constraint``); MMEngine sums them."""
        losses = super().loss(feats, data_samples, **kwargs)
        losses['loss_constraint'] = self.constraint()
        return losses
