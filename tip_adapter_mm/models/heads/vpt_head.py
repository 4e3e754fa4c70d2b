"""VPT: learned prompt tokens inside CLIP's frozen ViT image tower."""
import math
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn

from mmpretrain.registry import MODELS
from ..utils.open_clip_towers import check_vit, encode_image
from .zero_shot_head import ZeroShotHead

#: Where the prompts act: the input only, or the first layers each.
VPT_DEPTHS = ('shallow', 'deep')
#: How the prompts start.
VPT_INITS = ('uniform', 'normal')


@MODELS.register_module()
class VPTHead(ZeroShotHead):
    """Visual Prompt Tuning (Jia et al., "Visual Prompt Tuning", ECCV 2022;
    code KMnP/vpt, src/models/vit_prompt/vit.py) in CLIP's ViT, as the
    CLIP few-shot papers run it (the VPT baseline of MaPLe's code,
    muzairkhattak/multimodal-prompt-learning, trainers/vpt.py): ``P``
    learned tokens join the image tower's sequence, the text classifier is
    CLIP's zero-shot weights of the hand-crafted prompts::

        f      = normalize(ViT(images; prompts))            # (B, C)
        logits = clip_logit_scale * f @ zero_shot_weights    # (B, N)

    **Where the tokens go.** The sequence entering block 0 (patch and class
    tokens with their positional embeddings, after ``ln_pre``) gets ``P``
    prompt tokens right after the class token, as KMnP/vpt places them::

        [CLS] p_1 .. p_P [PATCH_1] .. [PATCH_L]

    ``'shallow'``: these tokens are the only prompts; their outputs travel
    through every block. ``'deep'``: before each block ``i <
    prompt_depth`` (block 0 included) the ``P`` positions after the class
    token are *replaced* by that layer's own learned tokens (the previous
    block's outputs there are dropped); later blocks carry the last
    layer's outputs on. The class token is pooled as usual (``ln_post``,
    ``proj``). The prompts have no positional embedding; attention does
    not depend on the order of tokens, so placing them at the end
    (MaPLe's code) gives the same class token.

    **Initialisation** (:meth:`fit`, from the global torch RNG, which
    MMEngine seeds): ``'uniform'`` as KMnP/vpt, U(-b, b) with the
    Xavier-uniform bound ``b = sqrt(6 / (3 * patch_size**2 + width))``;
    ``'normal'`` as MaPLe's VPT baseline, N(0, 0.02^2). ``dropout`` (0 by
    default, KMnP's ``PROMPT.DROPOUT``) drops prompt entries while
    training.

    The prompts ``(J, P, W)`` (``J`` = 1 shallow, ``prompt_depth`` deep)
    are the only trained tensor; they do not depend on the class list.
    **The image tower** is open_clip's ViT of the classifier's
    ``OpenCLIPVisualBackbone``, handed over with :meth:`set_image_tower`
    (class attribute ``uses_image_tower``); it is not a submodule: never
    saved, outside ``parameters()``, frozen. Checkpoints hold the prompts,
    the zero-shot weights and the logit scale.

    Args:
        num_classes (int): N.
        num_prompts (int): ``P`` tokens per layer (MaPLe's VPT baseline: 8).
        depth (str): ``'shallow'`` or ``'deep'``.
        prompt_depth (int, optional): Deep prompts: the number of layers
            with their own tokens, from the first; None: every layer.
            Ignored for ``'shallow'``.
        init (str): ``'uniform'`` (KMnP/vpt) or ``'normal'`` (std 0.02).
        dropout (float): Dropout on the prompt tokens while training.
        clip_logit_scale, loss, topk, init_cfg: As :class:`ZeroShotHead`.
    """

    dynamic_buffers = ZeroShotHead.dynamic_buffers + ('prompts', )
    method_name = 'VPT'
    uses_image_tower = True
    class_agnostic = True

    def __init__(self,
                 num_classes: int,
                 num_prompts: int = 8,
                 depth: str = 'deep',
                 prompt_depth: Optional[int] = None,
                 init: str = 'uniform',
                 dropout: float = 0.0,
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
        if depth not in VPT_DEPTHS:
            raise ValueError(f'VPTHead: depth must be one of {VPT_DEPTHS}, '
                             f'got {depth!r}.')
        if init not in VPT_INITS:
            raise ValueError(f'VPTHead: init must be one of {VPT_INITS}, '
                             f'got {init!r}.')
        if int(num_prompts) < 1:
            raise ValueError(
                f'VPTHead: num_prompts must be >= 1, got {num_prompts}.')
        if depth == 'deep' and prompt_depth is not None and int(
                prompt_depth) < 1:
            raise ValueError('VPTHead: prompt_depth must be >= 1 or None '
                             f'(every layer), got {prompt_depth}.')
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(
                f'VPTHead: dropout must be in [0, 1), got {dropout}.')
        self.num_prompts = int(num_prompts)
        self.depth = depth
        self.prompt_depth = None if prompt_depth is None else int(
            prompt_depth)
        self.init = init
        self.prompt_dropout = nn.Dropout(float(dropout))
        self.prompts = nn.Parameter(torch.zeros(0, 0, 0))
        # Not a submodule on purpose (see the class docstring).
        object.__setattr__(self, 'image_tower', None)

    # -- the image tower -----------------------------------------------------
    def set_image_tower(self, visual: nn.Module) -> None:
        """Keep open_clip's (frozen) ViT tower ``visual``."""
        check_vit(visual, 'VPTHead')
        layers = len(visual.transformer.resblocks)
        if self.depth == 'deep' and (self.prompt_depth or 0) > layers:
            raise ValueError(
                f'VPTHead: prompt_depth={self.prompt_depth} but the image '
                f'tower has {layers} layers.')
        object.__setattr__(self, 'image_tower', visual)

    def _require_tower(self) -> nn.Module:
        if self.image_tower is None:
            raise RuntimeError(
                'VPTHead has no image tower yet: CLIPFewShotClassifier hands '
                "it over (model.backbone=OpenCLIPVisualBackbone(output='"
                "projected')), or call set_image_tower().")
        return self.image_tower

    @property
    def num_layers(self) -> int:
        """``J``: the layers with their own prompt tokens."""
        if self.depth == 'shallow':
            return 1
        if self.prompt_depth is not None:
            return self.prompt_depth
        return len(self._require_tower().transformer.resblocks)

    # -- the prompts ---------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self.prompts.numel() > 0

    def init_bound(self) -> float:
        """KMnP/vpt's uniform bound ``sqrt(6 / (3 * p * p + W))`` for the
        tower's patch size ``p`` and width ``W``."""
        conv = self._require_tower().conv1
        patch_dim = conv.in_channels * math.prod(conv.kernel_size)
        return math.sqrt(6.0 / float(patch_dim + conv.out_channels))

    def fit(self, view_feats: None, labels: torch.Tensor) -> None:
        """Initialise the prompts ``(J, P, W)`` (the few-shot images are the
        training set: nothing is taken from them; ``view_feats`` is None,
        ``labels`` ``(S, )`` are checked)."""
        if view_feats is not None:
            raise ValueError(
                'VPTHead trains inside the image tower: fit(None, labels), '
                'with no stored views.')
        if labels.dim() != 1 or (len(labels) and (
                labels.min() < 0 or labels.max() >= self.num_classes)):
            raise ValueError(
                f'VPTHead.fit: labels must be (S, ) in [0, '
                f'{self.num_classes}), got {tuple(labels.shape)}.')
        visual = self._require_tower()
        width = visual.conv1.out_channels
        prompts = torch.empty(self.num_layers, self.num_prompts, width,
                              device=self.is_searched.device)
        with torch.no_grad():
            if self.init == 'uniform':
                bound = self.init_bound()
                nn.init.uniform_(prompts, -bound, bound)
            else:
                nn.init.normal_(prompts, std=0.02)
        self.prompts.data = prompts

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Raw image embeddings ``(B, C)`` of ``images`` ``(B, 3, H, W)``
        through the prompted tower (gradients reach the prompts)."""
        self._require_fitted()
        visual = self._require_tower()
        if self.prompts.shape[-1] != visual.conv1.out_channels:
            raise ValueError(
                f'VPTHead: the prompts are {self.prompts.shape[-1]}-wide but '
                f'the image tower is {visual.conv1.out_channels}-wide: load '
                'prompts trained on this tower.')
        prompts = self.prompt_dropout(self.prompts)
        num = self.num_prompts

        def before_block(i: int, x: torch.Tensor) -> torch.Tensor:
            if i >= prompts.shape[0]:
                return x
            p = prompts[i].to(x.dtype).unsqueeze(0).expand(
                x.shape[0], -1, -1)
            rest = x[:, 1:] if i == 0 else x[:, 1 + num:]
            return torch.cat([x[:, :1], p, rest], dim=1)

        return encode_image(visual, images, before_block)
