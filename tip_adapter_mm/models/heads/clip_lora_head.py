"""CLIP-LoRA: low-rank updates of the attention projections of both of
CLIP's towers."""
import math
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmpretrain.registry import MODELS
from ...structures import Features
from ..utils.open_clip_towers import (QKVUpdate, check_vit, encode_image,
                                      encode_text_embeddings)
from .zero_shot_head import ZeroShotHead

#: The attention projections a LoRA can update (``'o'``, the output
#: projection of the official code, is not among them: see the class
#: docstring).
PROJECTIONS = ('q', 'k', 'v')
#: The towers, by the official ``--encoder`` choice.
ENCODERS = {'both': ('image', 'text'), 'vision': ('image', ),
            'text': ('text', )}
#: Named layer ranges of the official ``--position`` choice, as fractions
#: of a tower's depth L (their tables for 12 layers: bottom 0-3, mid 4-7,
#: up 8-11, half-bottom 0-5, half-up 6-11; ViT-L/14's 24 layers: halves of
#: 24).
POSITIONS = {
    'all': (0, 1),
    'bottom': (0, 1 / 3),
    'mid': (1 / 3, 2 / 3),
    'up': (2 / 3, 1),
    'half-bottom': (0, 1 / 2),
    'half-up': (1 / 2, 1),
}


def layer_indices(position: Union[str, Sequence[int]],
                  depth: int) -> List[int]:
    """The blocks of a ``depth``-layer tower that get LoRA factors: a name
    of :data:`POSITIONS` (``[floor(lo * L), floor(hi * L))``) or explicit
    indices."""
    if isinstance(position, str):
        if position not in POSITIONS:
            raise ValueError(f'CLIPLoRAHead: position must be one of '
                             f'{sorted(POSITIONS)} or a list of layer '
                             f'indices, got {position!r}.')
        lo, hi = POSITIONS[position]
        indices = list(range(int(lo * depth), int(hi * depth)))
    else:
        indices = sorted({int(i) for i in position})
        bad = [i for i in indices if not 0 <= i < depth]
        if bad:
            raise ValueError(f'CLIPLoRAHead: layer indices {bad} are outside '
                             f'the tower\'s {depth} layers.')
    if not indices:
        raise ValueError(f'CLIPLoRAHead: position {position!r} selects no '
                         f'layer of a {depth}-layer tower.')
    return indices


@MODELS.register_module()
class CLIPLoRAHead(ZeroShotHead):
    """CLIP-LoRA (Zanella and Ben Ayed, "Low-Rank Few-Shot Adaptation of
    Vision-Language Models", CVPRW 2024; code MaxZanella/CLIP-LoRA,
    loralib/utils.py, loralib/layers.py, lora.py) for L2-normalised image
    features ``f`` ``(B, C)`` of the adapted image tower::

        q = W_q h + s * B_q A_q drop(h)    (same for k, v; h = ln_1(x))
        t_c    = text_tower_LoRA('a photo of a <name of c>.')    # (N, C)
        logits = clip_logit_scale * f @ normalize(t).T           # (B, N)

    in every selected block (``position``) of the selected towers
    (``encoder``). ``A`` ``(r, W)`` starts as ``nn.Linear``'s weight
    (Kaiming-uniform, ``a = sqrt(5)``), ``B`` ``(W, r)`` at zero, so the
    untrained head is zero-shot CLIP with the single prompt of the
    official code (``'a photo of a {}.'`` for every dataset: their dataset
    files end by setting it). Dropout (0.25) acts on the LoRA's input only,
    independently for q, k and v, while training. The scale ``s`` is the
    official code's ``alpha / sqrt(r)`` (their ``LoRALayer``; the original
    LoRA's ``alpha / r`` is commented out there): 0.707 for r = 2,
    alpha = 1. The factors are the only trained tensors; both towers stay
    frozen, the gradient flows through them.

    **Why q/k/v deltas.** open_clip's blocks use ``nn.MultiheadAttention``,
    which packs the three projections into one ``in_proj_weight`` ``(3W,
    W)`` read by ``F.multi_head_attention_forward``: there is no
    ``nn.Linear`` per projection that MMPretrain's ``LoRALinear``
    (``mmpretrain.models.peft.lora``) could wrap (the official code
    replaces the attention module by its own with three ``Linear``). Here
    the blocks run through :mod:`..utils.open_clip_towers`, which computes
    the attention from ``in_proj_weight`` and adds the low-rank terms
    ``(dq, dk, dv)`` to the projections: the same as adding ``s * B A`` to
    the matching rows of ``in_proj_weight`` (tests check this). The
    output projection (the official optional ``'o'``) is not supported.

    **The towers.** The classifier hands the head open_clip's ViT image
    tower at construction (``set_image_tower``; the class attribute
    ``uses_image_tower``) and the text tower with the class names when it
    builds the zero-shot weights (``set_text_tower``; ``uses_text_tower``).
    Neither is a submodule: they are rebuilt from the config's weights,
    never saved, not in ``parameters()``. Checkpoints hold the factors
    (``lora.<tower>_<layer>_<q|k|v>_<A|B>``), which a fresh head takes at
    their saved shapes. The zero-shot weights of the model's templates are
    kept but unused by the logits. The text features of the adapted tower
    are computed once per training step (``N`` prompts) and, outside
    training and autograd, kept until a factor changes.

    Args:
        num_classes (int): N.
        rank (int): r (2).
        alpha (float): LoRA's alpha (1).
        dropout (float): Dropout on the LoRA input while training (0.25).
        params (sequence of str): Projections with a LoRA, among
            ``'q'``, ``'k'``, ``'v'`` (all three).
        position (str | sequence of int): Blocks with a LoRA in each tower:
            ``'all'``, ``'bottom'``, ``'mid'``, ``'up'``, ``'half-up'``,
            ``'half-bottom'`` (see :data:`POSITIONS`) or layer indices.
        encoder (str): ``'both'``, ``'vision'`` or ``'text'``.
        template (str): The prompt of each class (``'a photo of a {}.'``;
            underscores in names become spaces).
        clip_logit_scale, loss, topk, init_cfg: As :class:`ZeroShotHead`
            (100: the official code's fixed scale).
    """

    method_name = 'CLIP-LoRA'
    uses_text = True
    uses_text_tower = True
    uses_image_tower = True
    class_agnostic = True

    def __init__(self,
                 num_classes: int,
                 rank: int = 2,
                 alpha: float = 1.0,
                 dropout: float = 0.25,
                 params: Sequence[str] = ('q', 'k', 'v'),
                 position: Union[str, Sequence[int]] = 'all',
                 encoder: str = 'both',
                 template: str = 'a photo of a {}.',
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
        if int(rank) < 1:
            raise ValueError(f'CLIPLoRAHead: rank must be >= 1, got {rank}.')
        if not 0 <= float(dropout) < 1:
            raise ValueError(
                f'CLIPLoRAHead: dropout must be in [0, 1), got {dropout}.')
        params = tuple(params)
        if 'o' in params:
            raise ValueError(
                "CLIPLoRAHead: params 'o' (the attention's output "
                'projection) is not supported; the updates act on the '
                "query, key and value projections: use ('q', 'k', 'v').")
        if not params or any(p not in PROJECTIONS for p in params):
            raise ValueError(f'CLIPLoRAHead: params must be a non-empty '
                             f'subset of {PROJECTIONS}, got {params!r}.')
        if encoder not in ENCODERS:
            raise ValueError(f'CLIPLoRAHead: encoder must be one of '
                             f'{sorted(ENCODERS)}, got {encoder!r}.')
        if template.count('{}') != 1:
            raise ValueError('CLIPLoRAHead: template needs one {} for the '
                             f'class name, got {template!r}.')
        if not isinstance(position, str):
            position = tuple(int(i) for i in position)
        self.rank = int(rank)
        self.alpha = float(alpha)
        #: The official code's scale of the update, alpha / sqrt(r).
        self.scaling = self.alpha / math.sqrt(self.rank)
        self.dropout = float(dropout)
        self.params = tuple(p for p in PROJECTIONS if p in params)
        self.position = position
        self.encoder = encoder
        self.template = template
        #: ``<tower>_<layer>_<proj>_A`` ``(r, W)`` and ``..._B`` ``(W, r)``.
        self.lora = nn.ParameterDict()
        # Whether fit() has initialised the factors for training (saved:
        # a trained checkpoint is not initialised again).
        self.register_buffer('lora_initialised', torch.tensor(False))
        # Not submodules on purpose (see the class docstring).
        object.__setattr__(self, 'image_tower', None)
        object.__setattr__(self, 'text_clip', None)
        self._tokens: Optional[torch.Tensor] = None
        self._text_cache: Optional[Tuple[tuple, torch.Tensor]] = None

    # -- the factors ---------------------------------------------------------
    @staticmethod
    def factor_name(tower: str, layer: int, proj: str, which: str) -> str:
        return f'{tower}_{layer}_{proj}_{which}'

    def _make_factors(self, tower: str, blocks: nn.ModuleList) -> None:
        """Create (or check) the factors of ``tower``'s selected blocks."""
        if tower not in ENCODERS[self.encoder]:
            return
        device = self.is_searched.device
        for i in layer_indices(self.position, len(blocks)):
            attn = blocks[i].attn
            if not isinstance(attn, nn.MultiheadAttention):
                raise ValueError(
                    'CLIPLoRAHead needs open_clip blocks with '
                    'nn.MultiheadAttention, got '
                    f'{type(attn).__name__} in the {tower} tower.')
            width = attn.embed_dim
            for proj in self.params:
                shapes = dict(A=(self.rank, width), B=(width, self.rank))
                for which, shape in shapes.items():
                    name = self.factor_name(tower, i, proj, which)
                    if name in self.lora:
                        got = tuple(self.lora[name].shape)
                        if got != shape:
                            raise ValueError(
                                f'CLIPLoRAHead: factor {name} has shape '
                                f'{got} but the {tower} tower needs '
                                f'{shape} (a checkpoint of another model '
                                'or rank?).')
                        continue
                    self.lora[name] = nn.Parameter(
                        self._initial(which, shape, device))

    @staticmethod
    def _initial(which: str, shape: Tuple[int, int],
                 device: torch.device) -> torch.Tensor:
        """A as ``nn.Linear``'s weight (Kaiming-uniform, a = sqrt(5)), B
        zero: the official ``init_lora_param``."""
        value = torch.empty(shape, device=device)
        if which == 'A':
            nn.init.kaiming_uniform_(value, a=math.sqrt(5))
        else:
            nn.init.zeros_(value)
        return value

    def _factors_of(self, tower: str) -> List[str]:
        return [n for n in self.lora if n.startswith(tower + '_')]

    def qkv_update(self, tower: str) -> Optional[QKVUpdate]:
        """The ``(layer, h (B, L, W)) -> (dq, dk, dv)`` update of ``tower``
        (``'image'`` or ``'text'``) for :mod:`..utils.open_clip_towers`;
        None when the tower has no factors."""
        if not self._factors_of(tower):
            return None

        def update(layer: int, h: torch.Tensor):
            deltas = []
            for proj in PROJECTIONS:
                a = self.lora.get(self.factor_name(tower, layer, proj, 'A'))
                if a is None:
                    deltas.append(None)
                    continue
                b = self.lora[self.factor_name(tower, layer, proj, 'B')]
                x = F.dropout(h, self.dropout, self.training)
                deltas.append(
                    self.scaling * F.linear(F.linear(x, a.to(x.dtype)),
                                            b.to(x.dtype)))
            return tuple(deltas)

        return update

    # -- the towers ----------------------------------------------------------
    def set_image_tower(self, visual: nn.Module) -> None:
        """Keep open_clip's (frozen) ViT image tower; create its factors."""
        check_vit(visual, 'CLIPLoRAHead')
        object.__setattr__(self, 'image_tower', visual)
        self._make_factors('image', visual.transformer.resblocks)

    def set_text_tower(self, clip: nn.Module, tokenizer: Callable,
                       class_names: Sequence[str]) -> None:
        """Keep open_clip's (frozen) CLIP ``clip`` (its text tower) and the
        token ids ``(N, L)`` of the ``N`` class prompts; create the text
        factors."""
        if len(class_names) != self.num_classes:
            raise ValueError(
                f'CLIPLoRAHead has num_classes={self.num_classes} but got '
                f'{len(class_names)} class names.')
        prompts = [
            self.template.format(name.replace('_', ' '))
            for name in class_names
        ]
        device = self.is_searched.device
        object.__setattr__(self, 'text_clip', clip.to(device))
        self._tokens = tokenizer(prompts).to(device)
        self._text_cache = None
        self._make_factors('text', clip.transformer.resblocks)

    def forget_classes(self, num_classes: int) -> None:
        """Re-prompting (base-to-new, cross-dataset): also drops the
        prompts of the old names (the classifier hands the text tower back
        with the new ones); the LoRA factors stay."""
        super().forget_classes(num_classes)
        object.__setattr__(self, 'text_clip', None)
        self._tokens = None
        self._text_cache = None

    @property
    def has_zero_shot_weights(self) -> bool:
        """Also asks for the text tower, so that a head loaded from a
        checkpoint gets it back from the classifier."""
        return (super().has_zero_shot_weights
                and self.text_clip is not None)

    def _require_towers(self) -> None:
        if self.image_tower is None:
            raise RuntimeError(
                'CLIPLoRAHead has no image tower: the classifier hands it '
                "over (model.backbone=OpenCLIPVisualBackbone(output="
                "'projected')), or call set_image_tower().")
        if self.text_clip is None:
            raise RuntimeError(
                'CLIPLoRAHead has no text tower yet: the classifier hands it '
                'over with the zero-shot weights (BuildCacheHook; needs '
                'model.text_encoder), or call set_text_tower().')
        device = self.is_searched.device
        if self._tokens.device != device:
            self.text_clip.to(device)
            self._tokens = self._tokens.to(device)

    # -- fitting -------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return bool(self.lora_initialised)

    def fit(self, view_feats: Optional[Features],
            labels: torch.Tensor) -> None:
        """(Re-)initialise every factor (A Kaiming-uniform, B zero). The
        few-shot images are the training set: ``view_feats`` is None."""
        if view_feats is not None:
            raise ValueError(
                'CLIPLoRAHead trains inside the image tower: fit takes no '
                'stored views (view_feats=None).')
        self._require_towers()
        if len(labels) and (labels.min() < 0
                            or labels.max() >= self.num_classes):
            raise ValueError(
                f'CLIPLoRAHead.fit: labels must be in [0, '
                f'{self.num_classes}), got [{int(labels.min())}, '
                f'{int(labels.max())}].')
        with torch.no_grad():
            for name, p in self.lora.items():
                p.copy_(self._initial(name[-1], tuple(p.shape), p.device))
        self.lora_initialised.fill_(True)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Factors a fresh head does not have yet (the text tower comes
        # later) are created at their saved shapes.
        start = prefix + 'lora.'
        for key, value in state_dict.items():
            name = key[len(start):]
            if key.startswith(start) and name not in self.lora:
                self.lora[name] = nn.Parameter(
                    torch.empty_like(value, device=self.is_searched.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- features ------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Raw image embeddings ``(B, C)`` of images ``(B, 3, H, W)``
        through the image tower with its LoRA (none: the frozen tower,
        without gradients)."""
        self._require_towers()
        update = self.qkv_update('image')
        if update is None:
            with torch.no_grad():
                return encode_image(self.image_tower, images)
        return encode_image(self.image_tower, images, qkv_update=update)

    def _encode_text(self) -> torch.Tensor:
        clip = self.text_clip
        update = self.qkv_update('text')
        if update is None:
            with torch.no_grad():
                return encode_text_embeddings(
                    clip, clip.token_embedding(self._tokens), self._tokens)
        return encode_text_embeddings(clip,
                                      clip.token_embedding(self._tokens),
                                      self._tokens, qkv_update=update)

    def text_features(self) -> torch.Tensor:
        """L2-normalised text features ``(N, C)`` of the class prompts
        through the text tower with its LoRA: computed at every call while
        training or under autograd, else kept until a factor changes."""
        self._require_fitted()
        self._require_towers()
        if self.training or torch.is_grad_enabled():
            self._text_cache = None
            return F.normalize(self._encode_text().float(), dim=-1)
        key = (self._tokens.data_ptr(), self._tokens.device,
               torch.is_autocast_enabled(),
               tuple((name, p.data_ptr(), p._version)
                     for name, p in self.lora.items()))
        if self._text_cache is None or self._text_cache[0] != key:
            feats = F.normalize(self._encode_text().float(), dim=-1)
            self._text_cache = (key, feats)
        return self._text_cache[1]

    def forward(self, feats: Features) -> torch.Tensor:
        """CLIP-LoRA logits ``(B, N)``."""
        f = self.pre_logits(feats)
        text = self.text_features().to(f.dtype)
        return self.clip_logit_scale * f @ text.t()
