"""Zero-shot CLIP, and the base of heads that add a few-shot term to it."""
from typing import Optional, Tuple, Union

import torch

from mmpretrain.registry import MODELS
from ...structures import Features
from .base_head import FewShotHead


@MODELS.register_module()
class ZeroShotHead(FewShotHead):
    """Zero-shot CLIP for L2-normalised image features ``f`` ``(B, C)``::

        logits = clip_logit_scale * f @ zero_shot_weights

    ``zero_shot_weights`` ``(C, N)`` is CLIP's text classifier (prompts per
    class, encoded, normalised, averaged, normalised), built by the
    classifier from its text encoder. Nothing is fitted on the few-shot set
    and nothing is searched. Heads that add a few-shot term (Tip-Adapter,
    APE, GDA) derive from it.

    Args:
        num_classes (int): N.
        clip_logit_scale (float): Scale of the zero-shot logits; 100, the
            learned scale of released CLIP models. The classifier replaces
            it with the model's own ``logit_scale.exp()`` when asked.
        loss, topk, init_cfg: As :class:`FewShotHead`.
    """

    dynamic_buffers = ('zero_shot_weights', )
    method_name = 'Zero-shot CLIP'
    uses_text = True
    class_agnostic = True

    def __init__(self,
                 num_classes: int,
                 clip_logit_scale: float = 100.0,
                 loss: dict = dict(type='CrossEntropyLoss', loss_weight=1.0),
                 topk: Union[int, Tuple[int]] = (1, ),
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(num_classes, loss=loss, topk=topk, init_cfg=init_cfg)
        self.register_buffer(
            'clip_logit_scale',
            torch.tensor(float(clip_logit_scale), dtype=torch.float64))
        self.register_buffer('zero_shot_weights',
                             torch.zeros(0, self.num_classes))

    # -- zero-shot part ------------------------------------------------------
    @property
    def has_zero_shot_weights(self) -> bool:
        return self.zero_shot_weights.numel() > 0

    def set_zero_shot_weights(self, zero_shot_weights: torch.Tensor) -> None:
        """Store CLIP's text classifier ``(C, N)``."""
        if (zero_shot_weights.dim() != 2
                or zero_shot_weights.shape[1] != self.num_classes):
            raise ValueError(
                f'Expected zero_shot_weights (C, {self.num_classes}), got '
                f'{tuple(zero_shot_weights.shape)}: the head has '
                f'num_classes={self.num_classes}.')
        self.zero_shot_weights = zero_shot_weights.detach().float().to(
            self.is_searched.device).contiguous()

    def forget_classes(self, num_classes: int) -> None:
        """Also drops the zero-shot weights (rebuilt from the new names)."""
        super().forget_classes(num_classes)
        self.zero_shot_weights = torch.zeros(
            0, self.num_classes, device=self.zero_shot_weights.device)

    def clip_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """``(B, C) -> (B, N)`` zero-shot logits."""
        if not self.has_zero_shot_weights:
            raise RuntimeError(
                f'{type(self).__name__} has no zero_shot_weights yet: the '
                'classifier builds them from its text_encoder (BuildCacheHook'
                '), set_zero_shot_weights() sets them, or a checkpoint '
                'holds them.')
        return self.clip_logit_scale * feats @ self.zero_shot_weights

    # -- the few-shot term: none ---------------------------------------------
    @property
    def is_fitted(self) -> bool:
        """Zero-shot CLIP needs nothing from the few-shot set."""
        return True

    def fit(self, view_feats: Features, labels: torch.Tensor) -> None:
        """Nothing to fit."""
        self.check_views(view_feats, labels)

    def forward(self, feats: Features) -> torch.Tensor:
        """Zero-shot logits ``(B, N)``."""
        return self.clip_logits(self.pre_logits(feats))
