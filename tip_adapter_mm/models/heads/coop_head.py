"""CoOp: learned context words in CLIP's frozen text tower."""
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmpretrain.registry import MODELS
from ...structures import Features
from ..text_encoders.prompted_text_tower import (CLASS_TOKEN_POSITIONS,
                                                 PromptedTextTower)
from .zero_shot_head import ZeroShotHead


@MODELS.register_module()
class CoOpHead(ZeroShotHead):
    """CoOp (Zhou et al., "Learning to Prompt for Vision-Language Models",
    IJCV 2022; code KaiyangZhou/CoOp, trainers/coop.py) for L2-normalised
    image features ``f`` ``(B, C)``::

        t_c    = text_tower([SOS] ctx_1 .. ctx_M <name of c> . [EOS])
        logits = clip_logit_scale * f @ normalize(t).T        # (B, N)

    ``ctx`` are ``M`` learned vectors of the token-embedding width ``D``,
    shared by the classes (``(M, D)``) or one set per class
    (``class_specific``: ``(N, M, D)``); the class name goes at the
    ``'end'`` (default), ``'middle'`` or ``'front'`` of them (see
    :class:`PromptedTextTower`). They are the only trained tensor: the
    text tower stays frozen, its gradient flows through to ``ctx``.

    ``ctx`` starts as in the official code: from the word embeddings of
    ``context_init`` (e.g. ``'a photo of a'``: then ``M`` is its number of
    tokens and the untrained head is zero-shot CLIP with the prompt ``'a
    photo of a {name}.'``), else from N(0, 0.02^2). With
    ``class_specific`` and ``context_init`` every class starts from the
    same words (the official code then falls back to a shared context).

    **The text tower.** The classifier hands the head open_clip's text
    tower of its ``text_encoder`` and the dataset's class names
    (:meth:`set_text_tower`, when it builds the zero-shot weights; the
    class attribute ``uses_text_tower`` asks for it). The tower is not a
    submodule: it is rebuilt from the config's weights, never saved in or
    loaded from a checkpoint, outside ``parameters()`` (so neither the
    optimizer nor DDP sees it); it follows ``ctx``'s device. Checkpoints
    hold ``ctx``, the zero-shot weights and the logit scale.

    Args:
        num_classes (int): N.
        num_context (int): ``M`` (16 in the paper), when ``context_init``
            is not given.
        context_init (str, optional): Words to start the context from
            (``'a photo of a'``); sets ``M``.
        class_specific (bool): One context per class (CoOp's CSC).
        class_token_position (str): ``'end'``, ``'middle'`` or
            ``'front'``.
        init_std (float): Std of the random initialisation (0.02).
        clip_logit_scale, loss, topk, init_cfg: As :class:`ZeroShotHead`.
    """

    dynamic_buffers = ZeroShotHead.dynamic_buffers + ('ctx', )
    method_name = 'CoOp'
    uses_text = True
    uses_text_tower = True

    def __init__(self,
                 num_classes: int,
                 num_context: int = 16,
                 context_init: Optional[str] = None,
                 class_specific: bool = False,
                 class_token_position: str = 'end',
                 init_std: float = 0.02,
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
        if class_token_position not in CLASS_TOKEN_POSITIONS:
            raise ValueError(
                f'CoOpHead: class_token_position must be one of '
                f'{CLASS_TOKEN_POSITIONS}, got {class_token_position!r}.')
        if context_init is None and int(num_context) < 1:
            raise ValueError(
                f'CoOpHead: num_context must be >= 1, got {num_context}.')
        if context_init is not None and not context_init.strip():
            raise ValueError('CoOpHead: context_init is an empty string; '
                             'give words or None.')
        self.num_context = int(num_context)
        self.context_init = context_init
        self.class_specific = bool(class_specific)
        self.class_token_position = class_token_position
        self.init_std = float(init_std)
        self.ctx = nn.Parameter(torch.zeros(0, 0))
        self._tokenizer: Optional[Callable] = None
        # Not a submodule on purpose (see the class docstring).
        object.__setattr__(self, 'text_tower', None)

    @property
    def class_agnostic(self) -> bool:
        """A shared context names any class; a context per class does
        not."""
        return not self.class_specific

    def forget_classes(self, num_classes: int) -> None:
        """Also drops the text tower's prompts of the old names (the
        classifier hands the tower back with the new ones)."""
        super().forget_classes(num_classes)
        object.__setattr__(self, 'text_tower', None)

    # -- the text tower ------------------------------------------------------
    def set_text_tower(self, clip: nn.Module, tokenizer: Callable,
                       class_names: Sequence[str]) -> None:
        """Keep open_clip's (frozen) text tower ``clip`` with its
        ``tokenizer`` and the dataset's ``N`` class names, in label
        order."""
        if len(class_names) != self.num_classes:
            raise ValueError(
                f'CoOpHead has num_classes={self.num_classes} but got '
                f'{len(class_names)} class names.')
        num_context = self.num_context
        if self.context_init is not None:
            num_context = len(tokenizer.encode(self.context_init))
        tower = PromptedTextTower(clip, tokenizer, class_names, num_context,
                                  self.class_token_position)
        object.__setattr__(self, 'text_tower',
                           tower.to(self.is_searched.device))
        self._tokenizer = tokenizer

    @property
    def has_zero_shot_weights(self) -> bool:
        """Also asks for the text tower, so that a head loaded from a
        checkpoint gets it back from the classifier."""
        return (super().has_zero_shot_weights
                and self.text_tower is not None)

    def _require_tower(self) -> PromptedTextTower:
        if self.text_tower is None:
            raise RuntimeError(
                'CoOpHead has no text tower yet: the classifier hands it '
                'over with the zero-shot weights (BuildCacheHook; needs '
                'model.text_encoder), or call set_text_tower().')
        if self.text_tower.tokens.device != self.is_searched.device:
            self.text_tower.to(self.is_searched.device)
        return self.text_tower

    # -- the context ---------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self.ctx.numel() > 0

    def fit(self, view_feats: Features, labels: torch.Tensor) -> None:
        """Initialise the context (nothing is taken from the views, which
        are the training set); checks that the text features have the
        image features' width ``C``."""
        views, = self.check_views(view_feats, labels)
        tower = self._require_tower()
        out = tower.clip.text_projection
        if out is not None:
            width = (out.out_features
                     if isinstance(out, nn.Linear) else out.shape[1])
            if width != views.shape[-1]:
                raise ValueError(
                    f'CoOpHead: the text tower gives {width}-d features '
                    f'but the images have {views.shape[-1]}: use the '
                    'text tower of the same CLIP model.')
        device = self.is_searched.device
        n, m, d = self.num_classes, tower.num_context, tower.width
        with torch.no_grad():
            if self.context_init is not None:
                words = tower.word_embeddings(self.context_init,
                                              self._tokenizer)
                ctx = words if not self.class_specific else (
                    words.unsqueeze(0).repeat(n, 1, 1))
            else:
                shape = (n, m, d) if self.class_specific else (m, d)
                ctx = torch.empty(shape, device=device)
                nn.init.normal_(ctx, std=self.init_std)
            self.ctx.data = ctx.to(device).contiguous()

    def text_features(self) -> torch.Tensor:
        """L2-normalised text features ``(N, C)`` of the learned prompts."""
        self._require_fitted()
        return F.normalize(self._require_tower()(self.ctx), dim=-1)

    def forward(self, feats: Features) -> torch.Tensor:
        """CoOp logits ``(B, N)``."""
        f = self.pre_logits(feats)
        text = self.text_features().to(f.dtype)
        return self.clip_logit_scale * f @ text.t()
