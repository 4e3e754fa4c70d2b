"""Heads that train a classifier starting from CLIP's text prototypes."""
from typing import Optional, Tuple, Union

import torch

from ...structures import Features
from .zero_shot_head import ZeroShotHead


class TextPrototypeHead(ZeroShotHead):
    """Base of the trained heads whose classifier starts from the text
    prototypes ``t_c`` of CLIP's zero-shot classifier (TaskRes, CLAP).

    Their official code trains on the *raw* text features (the text
    encoder's output, not L2-normalised), so the scale of ``t_c`` sets how
    far an optimiser step moves the classifier (TaskRes) and how strongly a
    penalty on ``w_c - t_c`` weighs against the cross-entropy (CLAP). Here
    the base classifier is

        text_base = zero_shot_weights * text_norms    (C, N)

    with ``text_norms`` ``(N, )`` the per-class norms of the raw text
    features (:meth:`set_text_norms`). Until they are set, ``text_norms``
    is empty and the base is the L2-normalised ``zero_shot_weights``
    (every norm 1). Set them before :meth:`fit`, which starts the trained
    classifier from the base.

    Args:
        num_classes, clip_logit_scale, loss, topk, init_cfg: As
            :class:`ZeroShotHead`.
    """

    class_agnostic = False  # fitted per class
    dynamic_buffers = ZeroShotHead.dynamic_buffers + ('text_norms', )
    uses_text = True

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
        self.register_buffer('text_norms', torch.zeros(0))

    def set_text_norms(self, text_norms: torch.Tensor) -> None:
        """Store the norms ``(N, )`` of the raw text features of the
        classes (positive)."""
        text_norms = torch.as_tensor(text_norms).detach().flatten()
        if len(text_norms) != self.num_classes:
            raise ValueError(
                f'{type(self).__name__}.set_text_norms: expected '
                f'{self.num_classes} norms (num_classes), got '
                f'{len(text_norms)}.')
        if not bool((text_norms > 0).all()):
            raise ValueError(f'{type(self).__name__}.set_text_norms: norms '
                             'must be positive.')
        self.text_norms = text_norms.float().to(
            self.is_searched.device).contiguous()

    def text_base(self) -> torch.Tensor:
        """The text prototypes ``(C, N)`` the classifier starts from, at
        the raw scale when ``text_norms`` is set."""
        if not self.has_zero_shot_weights:
            raise RuntimeError(
                f'{type(self).__name__} has no zero_shot_weights yet: the '
                'classifier builds them from its text_encoder (BuildCacheHook'
                '), set_zero_shot_weights() sets them, or a checkpoint '
                'holds them.')
        if self.text_norms.numel() == 0:
            return self.zero_shot_weights
        return self.zero_shot_weights * self.text_norms

    def _check_channels(self, view_feats: Features,
                        labels: torch.Tensor) -> torch.Tensor:
        """``fit``'s views ``(V, S, C)``, checked against the text
        classifier's ``C``."""
        views, = self.check_views(view_feats, labels)
        channels = self.text_base().shape[0]
        if views.shape[-1] != channels:
            raise ValueError(
                f'{type(self).__name__}.fit: the views have '
                f'{views.shape[-1]} channels but zero_shot_weights '
                f'{tuple(self.zero_shot_weights.shape)} has {channels}: the '
                'text and visual towers must be of the same CLIP model.')
        return views
