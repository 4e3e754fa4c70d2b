"""CoCoOp: CoOp's learned context, shifted per image by a small meta-net."""
import math
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmpretrain.registry import MODELS
from ...structures import Features
from .coop_head import CoOpHead


@MODELS.register_module()
class CoCoOpHead(CoOpHead):
    """CoCoOp (Zhou et al., "Conditional Prompt Learning for
    Vision-Language Models", CVPR 2022; code KaiyangZhou/CoOp,
    trainers/cocoop.py) for L2-normalised image features ``f`` ``(B, C)``::

        pi(f)    = W_up relu(W_down f + b_down) + b_up          # (B, D)
        t_c(f_i) = text_tower([SOS] ctx_1 + pi(f_i) .. ctx_M + pi(f_i)
                              <name of c> . [EOS])
        logits_i = clip_logit_scale * f_i @ normalize(t(f_i)).T  # (N,)

    The meta-net ``pi`` (``Linear(C, C // reduction)``, ReLU,
    ``Linear(C // reduction, D)``, as the official ``meta_net``) reads the
    normalised image feature (the official code normalises the image
    features before handing them to its prompt learner) and its output is
    added to every context vector: each image gets its own ``N`` prompts,
    so the text tower runs once per image (``B`` passes of ``N`` prompts).

    The context is shared by the classes, the class name at the end, as
    in CoCoOp (4 vectors from ``'a photo of a'`` in the official
    configs). The context and the meta-net (``meta_down``,
    ``meta_down_bias``, ``meta_up``, ``meta_up_bias``; created by
    :meth:`fit` once ``C`` and ``D`` are known, initialised as
    ``nn.Linear``) are the only trained tensors; the text tower is frozen
    and handed over by the classifier as for :class:`CoOpHead`.

    Args:
        num_classes (int): N.
        num_context (int): ``M`` when ``context_init`` is not given.
        context_init (str, optional): Words to start the context from
            (``'a photo of a'``, the official setting); sets ``M``.
        reduction (int): Hidden width of the meta-net ``C // reduction``
            (16).
        init_std, clip_logit_scale, loss, topk, init_cfg: As
            :class:`CoOpHead`.
    """

    dynamic_buffers = CoOpHead.dynamic_buffers + (
        'meta_down', 'meta_down_bias', 'meta_up', 'meta_up_bias')
    method_name = 'CoCoOp'

    def __init__(self,
                 num_classes: int,
                 num_context: int = 4,
                 context_init: Optional[str] = 'a photo of a',
                 reduction: int = 16,
                 init_std: float = 0.02,
                 clip_logit_scale: float = 100.0,
                 loss: dict = dict(type='CrossEntropyLoss', loss_weight=1.0),
                 topk: Union[int, Tuple[int]] = (1, ),
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(
            num_classes,
            num_context=num_context,
            context_init=context_init,
            class_specific=False,
            class_token_position='end',
            init_std=init_std,
            clip_logit_scale=clip_logit_scale,
            loss=loss,
            topk=topk,
            init_cfg=init_cfg)
        if int(reduction) < 1:
            raise ValueError(
                f'CoCoOpHead: reduction must be >= 1, got {reduction}.')
        self.reduction = int(reduction)
        self.meta_down = nn.Parameter(torch.zeros(0, 0))
        self.meta_down_bias = nn.Parameter(torch.zeros(0))
        self.meta_up = nn.Parameter(torch.zeros(0, 0))
        self.meta_up_bias = nn.Parameter(torch.zeros(0))

    @property
    def is_fitted(self) -> bool:
        return super().is_fitted and self.meta_down.numel() > 0

    def fit(self, view_feats: Features, labels: torch.Tensor) -> None:
        """Initialise the context (as :meth:`CoOpHead.fit`) and create the
        meta-net for the views' channels ``C`` and the token width
        ``D``."""
        super().fit(view_feats, labels)
        channels = self.check_views(view_feats, labels)[0].shape[-1]
        hidden = channels // self.reduction
        if hidden < 1:
            raise ValueError(
                f'CoCoOpHead.fit: {channels} channels leave no hidden '
                f'layer with reduction={self.reduction}.')
        width = self.ctx.shape[-1]
        device = self.is_searched.device
        with torch.no_grad():
            for prefix, (out, inp) in (('meta_down', (hidden, channels)),
                                       ('meta_up', (width, hidden))):
                weight = torch.empty(out, inp, device=device)
                nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
                bound = 1.0 / math.sqrt(inp)
                bias = torch.empty(out, device=device).uniform_(
                    -bound, bound)
                getattr(self, prefix).data = weight
                getattr(self, prefix + '_bias').data = bias

    def context_shift(self, feats: torch.Tensor) -> torch.Tensor:
        """``pi(f)``: ``(B, C) -> (B, D)``, added to every context
        vector."""
        self._require_fitted()
        hidden = F.relu(feats @ self.meta_down.t() + self.meta_down_bias)
        return hidden @ self.meta_up.t() + self.meta_up_bias

    def image_text_features(self, feats: torch.Tensor) -> torch.Tensor:
        """L2-normalised text features ``(B, N, C)``: image ``i``'s prompts
        built with the context ``ctx + pi(f_i)``."""
        tower = self._require_tower()
        shift = self.context_shift(feats)
        return torch.stack([
            F.normalize(tower(self.ctx + s), dim=-1) for s in shift
        ])

    def forward(self, feats: Features) -> torch.Tensor:
        """CoCoOp logits ``(B, N)``."""
        f = self.pre_logits(feats)
        text = self.image_text_features(f).to(f.dtype)
        scaled = self.clip_logit_scale * f
        return torch.cat([
            scaled[i:i + 1] @ text[i].t() for i in range(len(f))
        ]).reshape(len(f), self.num_classes)
