"""Convert open_clip / OpenAI CLIP visual towers to MMPretrain's modules.

Two visual tower families are supported:

* **VisionTransformer** (``ViT-*``) -> MMPretrain ``VisionTransformer``
  (``pre_norm=True``, ``final_norm=True``, ``out_type='cls_token'``,
  bias-free patch embedding, LayerNorm eps 1e-5) plus the
  ``CLIPProjection`` neck that holds ``visual.proj``.
* **ModifiedResNet** (``RN50``, ``RN101``, ...) -> MMPretrain
  ``ModifiedResNet`` (its parameter names already coincide with
  open_clip's, only the ``visual.`` prefix changes), no neck.

Key correspondence for the ViT (``C`` = width, ``L`` = 1 + grid**2,
``E`` = embedding dim; shapes unchanged unless shown)::

    visual.conv1.weight                -> backbone.patch_embed.projection.
                                          weight  (C, 3, P, P)
    visual.class_embedding (C,)        -> backbone.cls_token (1, 1, C)
    visual.positional_embedding (L, C) -> backbone.pos_embed (1, L, C)
    visual.ln_pre.*                    -> backbone.pre_norm.*
    visual.transformer.resblocks.i.
        ln_1.*                         -> backbone.layers.i.ln1.*
        attn.in_proj_{weight,bias}     -> backbone.layers.i.attn.qkv.*
        attn.out_proj.*                -> backbone.layers.i.attn.proj.*
        ln_2.*                         -> backbone.layers.i.ln2.*
        mlp.c_fc.*                     -> backbone.layers.i.ffn.layers.0.0.*
        mlp.c_proj.*                   -> backbone.layers.i.ffn.layers.1.*
    visual.ln_post.*                   -> backbone.ln1.*
    visual.proj (C, E)                 -> neck.proj (C, E)

The converted keys are those of an MMPretrain ``ImageClassifier``
(``backbone.*``, ``neck.*``), so the file works with ``load_from`` and with
``init_cfg=dict(type='Pretrained', checkpoint=FILE, prefix='backbone.')``.
"""
import math
import os
import re
import zipfile
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

#: Top-level keys of the CLIP text tower and model scalars (exact names or
#: module prefixes followed by '.'), dropped silently.
TEXT_TOWER_KEYS = ('token_embedding', 'positional_embedding', 'transformer',
                   'ln_final', 'text_projection', 'logit_scale', 'logit_bias',
                   'attn_mask', 'text', 'input_resolution', 'context_length',
                   'vocab_size')

SUPPORTED = (
    'Supported visual towers: the open_clip / OpenAI CLIP '
    'VisionTransformer with a class token, pre-LayerNorm and plain '
    'residual attention blocks (no LayerScale, attentional pooling, '
    'QK-norm, scaled-cosine attention or other NormFormer options) '
    'converted to MMPretrain VisionTransformer + CLIPProjection, and the '
    'CLIP ModifiedResNet with ResNet-50/101/152 stage depths (RN50, RN101) '
    'converted to MMPretrain ModifiedResNet. timm towers (visual.trunk.*) '
    'and token pooling other than the class token are not supported.')

_LINEAR = r'(weight|bias)'
_BN = r'(weight|bias|running_mean|running_var|num_batches_tracked)'

#: (regex on the key after 'visual.', replacement of the MMPretrain key).
_VIT_RULES: List[Tuple[str, str]] = [
    (r'conv1\.weight', 'backbone.patch_embed.projection.weight'),
    (r'class_embedding', 'backbone.cls_token'),
    (r'positional_embedding', 'backbone.pos_embed'),
    (r'ln_pre\.' + _LINEAR, r'backbone.pre_norm.\1'),
    (r'transformer\.resblocks\.(\d+)\.ln_1\.' + _LINEAR,
     r'backbone.layers.\1.ln1.\2'),
    (r'transformer\.resblocks\.(\d+)\.attn\.in_proj_' + _LINEAR,
     r'backbone.layers.\1.attn.qkv.\2'),
    (r'transformer\.resblocks\.(\d+)\.attn\.out_proj\.' + _LINEAR,
     r'backbone.layers.\1.attn.proj.\2'),
    (r'transformer\.resblocks\.(\d+)\.ln_2\.' + _LINEAR,
     r'backbone.layers.\1.ln2.\2'),
    (r'transformer\.resblocks\.(\d+)\.mlp\.c_fc\.' + _LINEAR,
     r'backbone.layers.\1.ffn.layers.0.0.\2'),
    (r'transformer\.resblocks\.(\d+)\.mlp\.c_proj\.' + _LINEAR,
     r'backbone.layers.\1.ffn.layers.1.\2'),
    (r'ln_post\.' + _LINEAR, r'backbone.ln1.\1'),
    (r'proj', 'neck.proj'),
]

#: ModifiedResNet names coincide in open_clip and MMPretrain.
_RESNET_RULES: List[Tuple[str, str]] = [
    (r'conv[123]\.weight', r'backbone.\g<0>'),
    (r'bn[123]\.' + _BN, r'backbone.\g<0>'),
    (r'layer[1-4]\.\d+\.conv[123]\.weight', r'backbone.\g<0>'),
    (r'layer[1-4]\.\d+\.bn[123]\.' + _BN, r'backbone.\g<0>'),
    (r'layer[1-4]\.\d+\.downsample\.0\.weight', r'backbone.\g<0>'),
    (r'layer[1-4]\.\d+\.downsample\.1\.' + _BN, r'backbone.\g<0>'),
    (r'attnpool\.positional_embedding', r'backbone.\g<0>'),
    (r'attnpool\.[qkvc]_proj\.' + _LINEAR, r'backbone.\g<0>'),
]

_VIT_LAYER_KEYS = ('ln1.weight', 'ln1.bias', 'attn.qkv.weight',
                   'attn.qkv.bias', 'attn.proj.weight', 'attn.proj.bias',
                   'ln2.weight', 'ln2.bias', 'ffn.layers.0.0.weight',
                   'ffn.layers.0.0.bias', 'ffn.layers.1.weight',
                   'ffn.layers.1.bias')


def _is_torchscript_archive(path: str) -> bool:
    """Whether ``path`` is a zip archive written by ``torch.jit.save``
    (these hold a ``constants.pkl`` record; ``torch.save`` archives
    don't)."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n == 'constants.pkl' or n.endswith('/constants.pkl')
               for n in names)


def load_clip_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Read the weights of an open_clip or OpenAI CLIP checkpoint.

    Accepted formats: a plain state dict or ``{'state_dict': ...}`` saved
    with ``torch.save`` (read with ``weights_only=True``; a leading
    ``module.`` of DDP checkpoints is stripped), a ``.safetensors`` file,
    or an OpenAI CLIP TorchScript archive (``torch.jit.load``).

    Args:
        path (str): The checkpoint file.

    Returns:
        dict[str, Tensor]: Parameter / buffer name -> tensor, on CPU, with
        open_clip's names (``visual.*``, text tower keys, ...).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` can't be read as one of the formats above.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f'CLIP checkpoint {path!r} does not exist (expected an open_clip '
            'state dict, a .safetensors file or an OpenAI TorchScript .pt).')
    try:
        if path.endswith('.safetensors'):
            from safetensors.torch import load_file
            checkpoint: Any = load_file(path, device='cpu')
        elif _is_torchscript_archive(path):
            checkpoint = torch.jit.load(path, map_location='cpu').state_dict()
        else:
            checkpoint = torch.load(
                path, map_location='cpu', weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the path
        raise ValueError(
            f'Could not read CLIP checkpoint {path!r} as a torch.save state '
            'dict (weights_only=True), a .safetensors file or a TorchScript '
            f'archive: {type(err).__name__}: {err}') from err
    if isinstance(checkpoint, Mapping) and isinstance(
            checkpoint.get('state_dict'), Mapping):
        checkpoint = checkpoint['state_dict']
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise ValueError(f'CLIP checkpoint {path!r} holds no state dict (got '
                         f'{type(checkpoint).__name__}).')
    state_dict = OrderedDict()
    for key, value in checkpoint.items():
        if not isinstance(key, str) or not torch.is_tensor(value):
            raise ValueError(
                f'CLIP checkpoint {path!r} is not a state dict: entry '
                f'{key!r} is a {type(value).__name__}, not a tensor.')
        if key.startswith('module.'):
            key = key[len('module.'):]
        state_dict[key] = value
    return state_dict


def _is_text_tower_key(key: str) -> bool:
    return any(key == p or key.startswith(p + '.') for p in TEXT_TOWER_KEYS)


def _map_keys(visual: Dict[str, torch.Tensor],
              rules: List[Tuple[str, str]]) -> Tuple[Dict[str, str], list]:
    """Map every key of ``visual`` (names after ``visual.``) with the
    first matching rule; return (mapping, unknown keys)."""
    compiled = [(re.compile(p), r) for p, r in rules]
    mapping, unknown = {}, []
    for key in visual:
        for pattern, repl in compiled:
            if pattern.fullmatch(key):
                mapping[key] = pattern.sub(repl, key)
                break
        else:
            unknown.append('visual.' + key)
    return mapping, unknown


def _detect_arch(visual: Dict[str, torch.Tensor]) -> str:
    if any(k.startswith('trunk.') for k in visual):
        raise ValueError(
            'The visual tower is a timm model (visual.trunk.* keys), which '
            f'MMPretrain has no equivalent for. {SUPPORTED}')
    if 'attnpool.positional_embedding' in visual or any(
            k.startswith('layer1.') for k in visual):
        return 'resnet'
    if 'conv1.weight' in visual and 'class_embedding' in visual:
        return 'vit'
    raise ValueError(
        'Could not recognise the visual tower from its keys (e.g. '
        f'{sorted(visual)[:8]}). {SUPPORTED}')


def _vit_info(visual: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    conv = visual['conv1.weight']  # (C, 3, P, P)
    width, patch = conv.shape[0], conv.shape[-1]
    if conv.shape[-2] != patch:
        raise ValueError(f'Non-square patches {tuple(conv.shape[-2:])} are '
                         'not supported.')
    pos = visual['positional_embedding']  # (1 + grid**2, C)
    grid = math.isqrt(pos.shape[0] - 1)
    if grid * grid != pos.shape[0] - 1:
        raise ValueError(
            f'visual.positional_embedding has {pos.shape[0]} tokens, not '
            '1 + a square grid; only square inputs are supported.')
    layer_ids = sorted({
        int(k.split('.')[2])
        for k in visual if k.startswith('transformer.resblocks.')
    })
    if layer_ids != list(range(len(layer_ids))):
        raise ValueError(f'visual.transformer.resblocks indices {layer_ids} '
                         'are not 0..N-1.')
    ffn = visual.get('transformer.resblocks.0.mlp.c_fc.weight')
    proj = visual.get('proj')  # (C, E)
    return dict(
        arch='vit',
        width=int(width),
        layers=len(layer_ids),
        patch_size=int(patch),
        image_size=int(grid * patch),
        feedforward_channels=None if ffn is None else int(ffn.shape[0]),
        pre_norm='ln_pre.weight' in visual,
        embed_dim=None if proj is None else int(proj.shape[1]))


def _resnet_info(visual: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    stage_depths = tuple(
        len({k.split('.')[1]
             for k in visual if k.startswith(f'layer{s}.')})
        for s in range(1, 5))
    if 'layer1.0.conv1.weight' not in visual or \
            'attnpool.positional_embedding' not in visual:
        raise ValueError('ModifiedResNet checkpoint lacks '
                         'visual.layer1.0.conv1.weight or '
                         'visual.attnpool.positional_embedding.')
    width = visual['layer1.0.conv1.weight'].shape[0]
    pos = visual['attnpool.positional_embedding']  # (1 + s**2, 32 * width)
    spacial = math.isqrt(pos.shape[0] - 1)
    if spacial * spacial != pos.shape[0] - 1:
        raise ValueError(
            f'visual.attnpool.positional_embedding has {pos.shape[0]} '
            'tokens, not 1 + a square grid.')
    return dict(
        arch='resnet',
        stage_depths=stage_depths,
        base_channels=int(width),
        width=int(width),
        feature_dim=int(pos.shape[1]),
        input_size=int(spacial * 32),
        image_size=int(spacial * 32),
        output_dim=int(visual['attnpool.c_proj.weight'].shape[0]),
        embed_dim=int(visual['attnpool.c_proj.weight'].shape[0]))


def _vit_expected_keys(info: Dict[str, Any]) -> List[str]:
    keys = [
        'backbone.patch_embed.projection.weight', 'backbone.cls_token',
        'backbone.pos_embed', 'backbone.ln1.weight', 'backbone.ln1.bias'
    ]
    if info['pre_norm']:
        keys += ['backbone.pre_norm.weight', 'backbone.pre_norm.bias']
    if info['embed_dim'] is not None:
        keys.append('neck.proj')
    for i in range(info['layers']):
        keys += [f'backbone.layers.{i}.{k}' for k in _VIT_LAYER_KEYS]
    return keys


def convert_visual_tower(
    state_dict: Mapping[str, torch.Tensor]
) -> Tuple['OrderedDict[str, torch.Tensor]', Dict[str, Any]]:
    """Rename an open_clip / OpenAI CLIP visual tower to MMPretrain keys.

    Args:
        state_dict (Mapping[str, Tensor]): A whole CLIP state dict, e.g.
            from :func:`load_clip_state_dict`. Text tower keys and model
            scalars (:data:`TEXT_TOWER_KEYS`) are dropped.

    Returns:
        tuple: ``(converted, info)``.

        - ``converted``: ``backbone.*`` / ``neck.*`` keys of an MMPretrain
          ``ImageClassifier``. Values are the source tensors (same dtype);
          only ``cls_token`` ``(C,) -> (1, 1, C)`` and ``pos_embed``
          ``(L, C) -> (1, L, C)`` change shape.
        - ``info``: what the shapes tell. ViT: ``arch='vit'``, ``width``,
          ``layers``, ``patch_size``, ``image_size``,
          ``feedforward_channels``, ``pre_norm``, ``embed_dim`` (``None``
          without ``visual.proj``). ResNet: ``arch='resnet'``,
          ``stage_depths`` (4-tuple), ``base_channels`` (= ``width``),
          ``feature_dim`` (32 * width), ``input_size`` (= ``image_size``),
          ``output_dim`` (= ``embed_dim``).

    Raises:
        ValueError: A ``visual.*`` key of an unsupported architecture, a
            non-visual key that is not part of the CLIP text tower, or an
            incomplete tower.
    """
    visual: Dict[str, torch.Tensor] = OrderedDict()
    foreign = []
    for key, value in state_dict.items():
        if key.startswith('visual.'):
            visual[key[len('visual.'):]] = value
        elif not _is_text_tower_key(key):
            foreign.append(key)
    if foreign:
        raise ValueError(
            f'Unexpected non-visual keys {foreign[:20]}' +
            (f' (+{len(foreign) - 20} more)' if len(foreign) > 20 else '') +
            '; expected only visual.* and CLIP text tower keys '
            f'{list(TEXT_TOWER_KEYS)}. Is this an open_clip CLIP checkpoint?')
    if not visual:
        raise ValueError('The checkpoint has no visual.* keys.')

    arch = _detect_arch(visual)
    rules = _VIT_RULES if arch == 'vit' else _RESNET_RULES
    mapping, unknown = _map_keys(visual, rules)
    if unknown:
        raise ValueError(
            f'Unknown visual keys for the {arch} tower: {unknown[:30]}' +
            (f' (+{len(unknown) - 30} more)' if len(unknown) > 30 else '') +
            f'. {SUPPORTED}')
    info = _vit_info(visual) if arch == 'vit' else _resnet_info(visual)

    converted: 'OrderedDict[str, torch.Tensor]' = OrderedDict()
    for key, new_key in mapping.items():
        value = visual[key]
        if new_key in ('backbone.cls_token', 'backbone.pos_embed'):
            value = value.reshape(1, -1, value.shape[-1])
        converted[new_key] = value
    if arch == 'vit':
        missing = sorted(set(_vit_expected_keys(info)) - set(converted))
        if missing:
            raise ValueError(f'Incomplete ViT visual tower, MMPretrain keys '
                             f'without a source: {missing[:20]}')
    return converted, info


def default_num_heads(info: Mapping[str, Any], head_width: int = 64) -> int:
    """open_clip's head count for a tower: ``width // head_width`` for a
    ViT, ``width * 32 // head_width`` for a ModifiedResNet (its attention
    pool runs on the ``32 * width`` channel feature map)."""
    if info['arch'] == 'vit':
        return info['width'] // head_width
    return info['width'] * 32 // head_width


def mmpretrain_tower_cfg(info: Mapping[str, Any],
                         num_heads: Optional[int] = None,
                         quick_gelu: Optional[bool] = None,
                         checkpoint: Optional[str] = None,
                         ln_eps: float = 1e-5) -> Dict[str, Optional[dict]]:
    """MMPretrain configs for the tower :func:`convert_visual_tower`
    converted.

    Args:
        info (Mapping): The ``info`` from :func:`convert_visual_tower`.
        num_heads (int, optional): Attention heads (not inferable from the
            weights). Defaults to open_clip's ``head_width=64`` convention
            (:func:`default_num_heads`).
        quick_gelu (bool, optional): ViT MLP activation: QuickGELU (OpenAI
            weights, ``-quickgelu`` models) or GELU. ``None`` means GELU,
            open_clip's default. Ignored for ResNets (ReLU).
        checkpoint (str, optional): A converted checkpoint; adds
            ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=...)``
            with ``prefix='backbone.'`` / ``'neck.'``.
        ln_eps (float): LayerNorm eps (open_clip uses torch's 1e-5 unless
            its config sets ``norm_kwargs``).

    Returns:
        dict: ``dict(backbone=..., neck=...)``; ``neck`` is ``None`` for a
        ResNet (its attention pool already projects) or a ViT without
        ``visual.proj``.
    """
    if num_heads is None:
        num_heads = default_num_heads(info)
    if info['arch'] == 'vit':
        if info['width'] % num_heads:
            raise ValueError(f'width {info["width"]} is not divisible by '
                             f'num_heads {num_heads}.')
        act = 'mmpretrain.QuickGELU' if quick_gelu else 'GELU'
        backbone = dict(
            type='mmpretrain.VisionTransformer',
            arch=dict(
                embed_dims=info['width'],
                num_layers=info['layers'],
                num_heads=num_heads,
                feedforward_channels=info['feedforward_channels']),
            img_size=info['image_size'],
            patch_size=info['patch_size'],
            pre_norm=info['pre_norm'],
            final_norm=True,
            out_type='cls_token',
            norm_cfg=dict(type='LN', eps=ln_eps),
            patch_cfg=dict(bias=False),
            layer_cfgs=dict(act_cfg=dict(type=act)))
        neck = None
        if info['embed_dim'] is not None:
            neck = dict(
                type='mmpretrain.CLIPProjection',
                in_channels=info['width'],
                out_channels=info['embed_dim'])
    elif info['arch'] == 'resnet':
        from mmpretrain.models.multimodal.chinese_clip.chinese_clip import \
            ModifiedResNet
        depths = {
            tuple(v[1]): k
            for k, v in ModifiedResNet.arch_settings.items()
        }
        depth = depths.get(tuple(info['stage_depths']))
        if depth is None:
            raise ValueError(
                f'ModifiedResNet stage depths {tuple(info["stage_depths"])} '
                'are not among MMPretrain ModifiedResNet depths '
                f'{ {d: s for s, d in depths.items()} }; this tower (e.g. '
                'RN50x4/x16/x64) has no MMPretrain config.')
        if info['feature_dim'] % num_heads:
            raise ValueError(f'feature dim {info["feature_dim"]} is not '
                             f'divisible by num_heads {num_heads}.')
        backbone = dict(
            type='mmpretrain.ModifiedResNet',
            depth=depth,
            base_channels=info['base_channels'],
            input_size=info['input_size'],
            num_attn_heads=num_heads,
            output_dim=info['output_dim'])
        neck = None
    else:
        raise ValueError(f'Unknown arch {info["arch"]!r}.')
    if checkpoint is not None:
        backbone['init_cfg'] = dict(
            type='Pretrained', checkpoint=checkpoint, prefix='backbone.')
        if neck is not None:
            neck['init_cfg'] = dict(
                type='Pretrained', checkpoint=checkpoint, prefix='neck.')
    return dict(backbone=backbone, neck=neck)


#: open_clip vision_cfg options that change the computation without
#: changing the weights' names, and the value MMPretrain's modules match.
_KEYLESS_OPTIONS = dict(
    pool_type='tok',
    final_ln_after_pool=False,
    act_kwargs=None,
    timm_model_name=None,
    attentional_pool=False,
    ls_init_value=None)


def tower_options_from_model_config(
        model_cfg: Mapping[str, Any],
        info: Optional[Mapping[str, Any]] = None,
        model_name: Optional[str] = None) -> Dict[str, Any]:
    """``num_heads``, ``quick_gelu`` and ``ln_eps`` for
    :func:`mmpretrain_tower_cfg` from an open_clip model config (the JSON
    dict with ``embed_dim``, ``vision_cfg``, ``quick_gelu``, ...).

    Heads follow open_clip's ``_build_vision_tower``: ``width //
    head_width`` for a ViT, ``width * 32 // head_width`` for a
    ModifiedResNet (``head_width`` defaults to 64). ``quick_gelu`` is the
    config's ``quick_gelu`` or a ``-quickgelu`` model name.

    Args:
        model_cfg (Mapping): open_clip model config.
        info (Mapping, optional): :func:`convert_visual_tower`'s info; when
            given, the config's width / layers / patch size / embed dim
            must agree with the weights.
        model_name (str, optional): The open_clip model name.

    Raises:
        ValueError: The config uses options MMPretrain's modules don't
            implement (average / attentional pooling, final LN after
            pooling, custom activation args, timm towers, ...) or disagrees
            with the weights.
    """
    vision = dict(model_cfg.get('vision_cfg') or {})
    unsupported = {
        k: vision[k]
        for k, ok in _KEYLESS_OPTIONS.items()
        if k in vision and vision[k] != ok
    }
    norm_kwargs = dict(vision.get('norm_kwargs') or {})
    ln_eps = float(norm_kwargs.pop('eps', 1e-5))
    if norm_kwargs:
        unsupported['norm_kwargs'] = vision['norm_kwargs']
    if unsupported:
        raise ValueError(
            f'open_clip vision_cfg options {unsupported} have no MMPretrain '
            f'equivalent. {SUPPORTED}')
    head_width = int(vision.get('head_width', 64))
    width = vision.get('width', 768)
    is_resnet = isinstance(vision.get('layers', 12), (list, tuple))
    num_heads = (width * 32 if is_resnet else width) // head_width
    quick_gelu = bool(model_cfg.get('quick_gelu', False)) or bool(
        model_name and model_name.endswith('-quickgelu'))
    if info is not None:
        expected = {
            'arch': 'resnet' if is_resnet else 'vit',
            'width': width,
            'embed_dim': model_cfg.get('embed_dim')
        }
        layers = vision.get('layers', 12)
        if is_resnet:
            expected['stage_depths'] = tuple(layers)
        else:
            expected['layers'] = layers
            expected['patch_size'] = vision.get('patch_size', 16)
        found = {
            k: (tuple(info[k]) if k == 'stage_depths' else info.get(k))
            for k in expected
        }
        wrong = {
            k: (expected[k], found[k])
            for k in expected if found[k] != expected[k]
        }
        if wrong:
            raise ValueError(
                'The open_clip model config does not describe these weights '
                '(option: (config, checkpoint)): ' +
                ', '.join(f'{k}: {v}' for k, v in wrong.items()))
    return dict(num_heads=num_heads, quick_gelu=quick_gelu, ln_eps=ln_eps)
