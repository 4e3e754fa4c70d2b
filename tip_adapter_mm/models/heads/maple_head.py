"""MaPLe: coupled prompts in both of CLIP's frozen towers."""
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmpretrain.registry import MODELS
from ..text_encoders.prompted_text_tower import PromptedTextTower
from ..utils.open_clip_towers import check_vit, encode_image
from .zero_shot_head import ZeroShotHead


@MODELS.register_module()
class MaPLeHead(ZeroShotHead):
    """MaPLe (Khattak et al., "MaPLe: Multi-modal Prompt Learning", CVPR
    2023; code muzairkhattak/multimodal-prompt-learning, trainers/maple.py
    and clip/model.py): learned prompts in the first ``J`` layers of the
    text tower; the image tower's prompts are linear maps ("coupling
    functions") of them::

        t_c    = TextTower(prompt_c; text prompts of layers 0..J-1)
        f      = ViT(images; F_j(text prompts of layer j), j < J)
        logits = clip_logit_scale * normalize(f) @ normalize(t).T  # (B, N)

    **Text side.** Layer 0's prompts are the context ``ctx`` ``(M, D)``
    placed as CoOp's (class name at the end): the tokens of
    ``'<context_init> <name>.'`` with the embeddings of the first ``M``
    tokens replaced by ``ctx``, which starts from those tokens' word
    embeddings (the official code with ``N_CTX: 2`` and ``'a photo of
    a'``: ``[SOS] ctx_1 ctx_2 of a <name> . [EOS]``, the untrained head is
    zero-shot CLIP with ``'a photo of a <name>.'`` at ``J = 1``). Without
    ``context_init``, ``ctx`` starts from N(0, 0.02^2) and the prompt is
    ``[SOS] ctx_1 .. ctx_M <name> . [EOS]``. Before each text block ``1 <=
    j < J`` the ``M`` positions after SOS are *replaced* by that layer's
    learned tokens ``deep_ctx[j - 1]`` (N(0, 0.02^2) at the start).

    **Image side.** Before block 0, ``ln_pre(F_0(ctx))`` (``M`` tokens) is
    appended at the end of the sequence (the official code appends
    ``F_0(ctx)`` before ``ln_pre``: the same, LayerNorm acts per token);
    before each block ``1 <= j < J`` the last ``M`` tokens are replaced by
    ``F_j(deep_ctx[j - 1])``. ``F_j`` are ``Linear(D, W)`` (text width to
    image width), stored as ``proj_weight`` ``(J, W, D)`` and
    ``proj_bias`` ``(J, W)``; they start as PyTorch's ``nn.Linear``
    initialisation, ``F_1 .. F_{J-1}`` as one copy (the official code
    clones one layer). The class token is pooled as usual.

    One text pass per forward (the ``N`` classes' prompts); the image
    prompts are recomputed from the current parameters in
    :meth:`encode_images`. The towers are the classifier's: open_clip's
    text tower with the class names (:meth:`set_text_tower`, as CoOp) and
    its ViT (:meth:`set_image_tower`); neither is a submodule (never saved,
    outside ``parameters()``, frozen). ``ctx``, ``deep_ctx``,
    ``proj_weight`` and ``proj_bias`` are the trained tensors; none
    depends on the class list. Checkpoints hold them, the zero-shot
    weights (unused by the logits) and the logit scale.

    Args:
        num_classes (int): N.
        num_context (int): ``M`` (official: 2).
        context_init (str, optional): Words whose first ``M`` tokens start
            ``ctx`` (``'a photo of a'``); the rest stay as fixed words
            before the class name. None: random ``ctx``.
        prompt_depth (int): ``J`` >= 1 (official: 9).
        init_std (float): Std of the random text prompts (0.02).
        clip_logit_scale, loss, topk, init_cfg: As :class:`ZeroShotHead`.
    """

    dynamic_buffers = ZeroShotHead.dynamic_buffers + (
        'ctx', 'deep_ctx', 'proj_weight', 'proj_bias')
    method_name = 'MaPLe'
    uses_text_tower = True
    uses_image_tower = True
    class_agnostic = True

    def __init__(self,
                 num_classes: int,
                 num_context: int = 2,
                 context_init: Optional[str] = 'a photo of a',
                 prompt_depth: int = 9,
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
        if int(num_context) < 1:
            raise ValueError(
                f'MaPLeHead: num_context must be >= 1, got {num_context}.')
        if int(prompt_depth) < 1:
            raise ValueError(
                f'MaPLeHead: prompt_depth must be >= 1, got {prompt_depth}.')
        if context_init is not None and not context_init.strip():
            raise ValueError('MaPLeHead: context_init is an empty string; '
                             'give words or None.')
        self.num_context = int(num_context)
        self.context_init = context_init
        self.prompt_depth = int(prompt_depth)
        self.init_std = float(init_std)
        self.ctx = nn.Parameter(torch.zeros(0, 0))
        # Empty at J = 1: nothing to learn there (so not trainable).
        self.deep_ctx = nn.Parameter(
            torch.zeros(0, 0, 0), requires_grad=self.prompt_depth > 1)
        self.proj_weight = nn.Parameter(torch.zeros(0, 0, 0))
        self.proj_bias = nn.Parameter(torch.zeros(0, 0))
        self._tokenizer: Optional[Callable] = None
        # Not submodules on purpose (see the class docstring).
        object.__setattr__(self, 'text_tower', None)
        object.__setattr__(self, 'image_tower', None)

    def forget_classes(self, num_classes: int) -> None:
        """Also drops the text tower's prompts of the old names (the
        classifier hands the tower back with the new ones); the learned
        prompts and coupling layers stay."""
        super().forget_classes(num_classes)
        object.__setattr__(self, 'text_tower', None)

    # -- the towers ----------------------------------------------------------
    def fixed_words(self, tokenizer: Callable) -> str:
        """The words of ``context_init`` after its first ``M`` tokens,
        which stay before every class name ('of a' for 'a photo of a' and
        ``M = 2``); ValueError unless the ``M`` tokens are whole words."""
        if self.context_init is None:
            return ''
        words = self.context_init.replace('_', ' ').split()
        for k in range(len(words) + 1):
            count = len(tokenizer.encode(' '.join(words[:k])))
            if count == self.num_context:
                return ' '.join(words[k:])
            if count > self.num_context:
                break
        total = len(tokenizer.encode(' '.join(words)))
        raise ValueError(
            f'MaPLeHead: num_context={self.num_context} must be the number '
            f'of tokens of the first words of context_init='
            f'{self.context_init!r} ({total} tokens in all).')

    def set_text_tower(self, clip: nn.Module, tokenizer: Callable,
                       class_names: Sequence[str]) -> None:
        """Keep open_clip's (frozen) text tower ``clip`` with its
        ``tokenizer`` and the dataset's ``N`` class names, in label
        order."""
        if len(class_names) != self.num_classes:
            raise ValueError(
                f'MaPLeHead has num_classes={self.num_classes} but got '
                f'{len(class_names)} class names.')
        layers = len(clip.transformer.resblocks)
        if self.prompt_depth > layers:
            raise ValueError(
                f'MaPLeHead: prompt_depth={self.prompt_depth} but the text '
                f'tower has {layers} layers.')
        rest = self.fixed_words(tokenizer)
        names = [f'{rest} {name}' if rest else name for name in class_names]
        tower = PromptedTextTower(clip, tokenizer, names, self.num_context,
                                  'end')
        object.__setattr__(self, 'text_tower',
                           tower.to(self.is_searched.device))
        self._tokenizer = tokenizer

    def set_image_tower(self, visual: nn.Module) -> None:
        """Keep open_clip's (frozen) ViT tower ``visual``."""
        check_vit(visual, 'MaPLeHead')
        layers = len(visual.transformer.resblocks)
        if self.prompt_depth > layers:
            raise ValueError(
                f'MaPLeHead: prompt_depth={self.prompt_depth} but the image '
                f'tower has {layers} layers.')
        object.__setattr__(self, 'image_tower', visual)

    @property
    def has_zero_shot_weights(self) -> bool:
        """Also asks for the text tower, so that a head loaded from a
        checkpoint gets it back from the classifier."""
        return (super().has_zero_shot_weights
                and self.text_tower is not None)

    def _require_towers(self) -> Tuple[PromptedTextTower, nn.Module]:
        if self.text_tower is None:
            raise RuntimeError(
                'MaPLeHead has no text tower yet: the classifier hands it '
                'over with the zero-shot weights (BuildCacheHook; needs '
                'model.text_encoder), or call set_text_tower().')
        if self.image_tower is None:
            raise RuntimeError(
                'MaPLeHead has no image tower yet: CLIPFewShotClassifier '
                "hands it over (model.backbone=OpenCLIPVisualBackbone(output"
                "='projected')), or call set_image_tower().")
        if self.text_tower.tokens.device != self.is_searched.device:
            self.text_tower.to(self.is_searched.device)
        return self.text_tower, self.image_tower

    # -- the prompts ---------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self.ctx.numel() > 0

    def fit(self, view_feats: None, labels: torch.Tensor) -> None:
        """Initialise the prompts and coupling layers (the few-shot images
        are the training set: ``view_feats`` is None, ``labels`` ``(S, )``
        are checked); checks that both towers give features of one
        width."""
        if view_feats is not None:
            raise ValueError(
                'MaPLeHead trains inside the image tower: fit(None, labels), '
                'with no stored views.')
        if labels.dim() != 1 or (len(labels) and (
                labels.min() < 0 or labels.max() >= self.num_classes)):
            raise ValueError(
                f'MaPLeHead.fit: labels must be (S, ) in [0, '
                f'{self.num_classes}), got {tuple(labels.shape)}.')
        text, visual = self._require_towers()
        out = text.clip.text_projection
        text_dim = (out.out_features if isinstance(out, nn.Linear) else
                    out.shape[1]) if out is not None else text.width
        image_dim = (visual.proj.shape[1] if visual.proj is not None else
                     visual.conv1.out_channels)
        if text_dim != image_dim:
            raise ValueError(
                f'MaPLeHead: the text tower gives {text_dim}-d features but '
                f'the image tower {image_dim}-d: use the towers of one CLIP '
                'model.')
        device = self.is_searched.device
        m, d = self.num_context, text.width
        width = visual.conv1.out_channels
        depth = self.prompt_depth
        with torch.no_grad():
            if self.context_init is not None:
                ctx = text.word_embeddings(self.context_init,
                                           self._tokenizer)[:m]
            else:
                ctx = torch.empty(m, d, device=device)
                nn.init.normal_(ctx, std=self.init_std)
            deep = torch.empty(depth - 1, m, d, device=device)
            nn.init.normal_(deep, std=self.init_std)
            first = nn.Linear(d, width, device=device)
            shared = nn.Linear(d, width, device=device)
            weight = torch.stack([first.weight] +
                                 [shared.weight] * (depth - 1))
            bias = torch.stack([first.bias] + [shared.bias] * (depth - 1))
        self.ctx.data = ctx.to(device).contiguous()
        self.deep_ctx.data = deep
        self.proj_weight.data = weight.contiguous()
        self.proj_bias.data = bias.contiguous()

    def text_prompts(self) -> torch.Tensor:
        """The text prompts of layers ``0 .. J-1``: ``(J, M, D)``."""
        return torch.cat([self.ctx.unsqueeze(0), self.deep_ctx], dim=0)

    def vision_prompts(self) -> torch.Tensor:
        """The image prompts of layers ``0 .. J-1``, ``F_j`` of the text
        prompts: ``(J, M, W)``."""
        return torch.einsum('jmd,jwd->jmw', self.text_prompts(),
                            self.proj_weight) + self.proj_bias.unsqueeze(1)

    def raw_text_features(self) -> torch.Tensor:
        """Unnormalised text features ``(N, C)`` of the prompted classes."""
        self._require_fitted()
        text, _ = self._require_towers()
        deep, m = self.deep_ctx, self.num_context

        def before_block(i: int, x: torch.Tensor) -> torch.Tensor:
            if i == 0 or i > deep.shape[0]:
                return x
            p = deep[i - 1].to(x.dtype).unsqueeze(0).expand(
                x.shape[0], -1, -1)
            return torch.cat([x[:, :1], p, x[:, 1 + m:]], dim=1)

        return text(self.ctx, before_block=before_block)

    def text_features(self) -> torch.Tensor:
        """L2-normalised text features ``(N, C)``."""
        return F.normalize(self.raw_text_features(), dim=-1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Raw image embeddings ``(B, C)`` of ``images`` ``(B, 3, H, W)``
        with the current coupled prompts (gradients reach ``ctx``,
        ``deep_ctx`` and the coupling layers)."""
        self._require_fitted()
        _, visual = self._require_towers()
        prompts = self.vision_prompts()
        if prompts.shape[-1] != visual.conv1.out_channels:
            raise ValueError(
                f'MaPLeHead: the image prompts are {prompts.shape[-1]}-wide '
                f'but the image tower is {visual.conv1.out_channels}-wide: '
                'load a head trained on this tower.')
        m = self.num_context

        def before_block(i: int, x: torch.Tensor) -> torch.Tensor:
            if i >= prompts.shape[0]:
                return x
            p = prompts[i].to(x.dtype)
            if i == 0:
                return torch.cat(
                    [x, visual.ln_pre(p).unsqueeze(0).expand(
                        x.shape[0], -1, -1)], dim=1)
            p = p.unsqueeze(0).expand(x.shape[0], -1, -1)
            return torch.cat([x[:, :-m], p], dim=1)

        return encode_image(visual, images, before_block)

    def forward(self, feats) -> torch.Tensor:
        """MaPLe logits ``(B, N)`` of the (L2-normalised) image features of
        :meth:`encode_images`."""
        f = self.pre_logits(feats)
        text = self.text_features().to(f.dtype)
        return self.clip_logit_scale * f @ text.t()
