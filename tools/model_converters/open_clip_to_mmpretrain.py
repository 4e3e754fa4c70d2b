"""Convert an open_clip / OpenAI CLIP visual tower to MMPretrain modules.

ViT towers become MMPretrain ``VisionTransformer`` + ``CLIPProjection``
(neck), ResNet towers (RN50, RN101, ...) MMPretrain ``ModifiedResNet``.
The text tower is dropped.

Usage (from the repository root)::

    python tools/model_converters/open_clip_to_mmpretrain.py \\
        SRC DST [--model-name NAME | --model-config-file JSON] \\
        [--num-heads N] [--quick-gelu]

    # OpenAI weights (TorchScript archive)
    python tools/model_converters/open_clip_to_mmpretrain.py \\
        ViT-B-32.pt vit-b-32_mmpretrain.pth --model-name ViT-B-32-quickgelu
    # an open_clip pretrained tag, downloaded by open_clip
    python tools/model_converters/open_clip_to_mmpretrain.py \\
        openai rn50_mmpretrain.pth --model-name RN50

SRC is an open_clip checkpoint (state dict, ``{'state_dict': ...}``,
``.safetensors``), an OpenAI CLIP TorchScript ``.pt``, or, with
``--model-name``, an open_clip pretrained tag (``openai``, ``laion2b_...``)
that open_clip downloads into its cache. DST receives
``{'state_dict': {backbone.*, neck.*}, 'meta': {...}}`` (refused if it
exists). The MMPretrain ``backbone`` / ``neck`` config to paste into a
config file is printed. Attention heads and the activation can't be read
from the weights: they come from ``--model-name`` (open_clip's built-in
config) or ``--model-config-file`` (an open_clip JSON), else from
``--num-heads`` / ``--quick-gelu`` or open_clip's defaults (head width 64;
QuickGELU for TorchScript archives, which are OpenAI's, GELU otherwise).
"""
import argparse
import json
import os
import os.path as osp
import pprint
import sys
import tempfile
from typing import List, Optional, Tuple

import torch

from tip_adapter_mm.converters.open_clip_to_mmpretrain import (
    _is_torchscript_archive, convert_visual_tower, load_clip_state_dict,
    mmpretrain_tower_cfg, tower_options_from_model_config)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Convert an open_clip / OpenAI CLIP visual tower to '
        'MMPretrain VisionTransformer + CLIPProjection or ModifiedResNet.')
    parser.add_argument(
        'src',
        help='open_clip or OpenAI CLIP checkpoint file, or with '
        '--model-name an open_clip pretrained tag (e.g. openai)')
    parser.add_argument('dst', help='output MMPretrain checkpoint (.pth)')
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        '--model-name',
        help='open_clip model name (e.g. ViT-B-16, RN50, '
        'ViT-B-32-quickgelu) whose config gives heads and activation')
    group.add_argument(
        '--model-config-file',
        help='open_clip JSON model config giving '
        'heads and activation')
    parser.add_argument(
        '--num-heads',
        type=int,
        default=None,
        help='override the number of attention heads')
    parser.add_argument(
        '--quick-gelu',
        action='store_true',
        help='force QuickGELU in the ViT MLPs')
    return parser.parse_args(argv)


def read_model_config(args: argparse.Namespace) -> Optional[dict]:
    if args.model_config_file:
        if not osp.isfile(args.model_config_file):
            raise FileNotFoundError(
                f'--model-config-file {args.model_config_file!r} does not '
                'exist.')
        with open(args.model_config_file, encoding='utf-8') as f:
            cfg = json.load(f)
        return cfg.get('model_cfg', cfg)
    if args.model_name:
        import open_clip
        cfg = open_clip.get_model_config(args.model_name)
        if cfg is None:
            raise ValueError(
                f'Unknown open_clip model name {args.model_name!r}; see '
                'open_clip.list_models() or pass --model-config-file.')
        return cfg
    return None


def resolve_source(src: str, model_name: Optional[str]) -> Tuple[str, dict]:
    """``(path, pretrained_cfg)`` of SRC: a file as it is, or an open_clip
    pretrained tag of ``--model-name`` (e.g. 'openai'), downloaded by
    open_clip into its cache (its pretrained config says, e.g., whether the
    weights were trained with QuickGELU)."""
    if osp.exists(src) or not model_name:
        return src, {}
    import open_clip
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if src not in tags:
        raise FileNotFoundError(
            f'SRC {src!r} is neither a file nor an open_clip pretrained tag '
            f'of {model_name!r} (tags: {tags}).')
    pretrained_cfg = open_clip.get_pretrained_cfg(model_name, src)
    path = open_clip.download_pretrained(pretrained_cfg)
    if not path:
        raise FileNotFoundError(
            f'open_clip could not download {model_name!r} / {src!r}.')
    return path, dict(pretrained_cfg)


def save_new(obj: dict, dst: str) -> None:
    """``torch.save`` to a temporary file next to ``dst``, then move it
    into place; never overwrite an existing ``dst``."""
    if osp.lexists(dst):
        raise FileExistsError(f'{dst!r} already exists; not overwriting it.')
    folder = osp.dirname(osp.abspath(dst))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=folder, prefix='.tmp_', suffix=osp.basename(dst))
    os.close(fd)
    try:
        torch.save(obj, tmp)
        try:
            # A hard link fails if dst appeared meanwhile: no overwrite.
            os.link(tmp, dst)
        except FileExistsError:
            raise FileExistsError(
                f'{dst!r} already exists; not overwriting it.') from None
        except OSError:  # no hard links on this file system
            if osp.lexists(dst):
                raise FileExistsError(
                    f'{dst!r} already exists; not overwriting it.')
            os.replace(tmp, dst)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    if osp.lexists(args.dst):
        raise FileExistsError(
            f'{args.dst!r} already exists; not overwriting it.')
    model_cfg = read_model_config(args)
    src, pretrained_cfg = resolve_source(args.src, args.model_name)

    state_dict = load_clip_state_dict(src)
    converted, info = convert_visual_tower(state_dict)
    torchscript = _is_torchscript_archive(src)

    options = dict(num_heads=None, quick_gelu=False, ln_eps=1e-5)
    if model_cfg is not None:
        options = tower_options_from_model_config(
            model_cfg, info, model_name=args.model_name)
        if torchscript and not options['quick_gelu'] \
                and info['arch'] == 'vit':
            print(
                'WARNING: SRC is a TorchScript archive (OpenAI CLIP, '
                'trained with QuickGELU) but the model config uses GELU; '
                'pass --quick-gelu or a -quickgelu model name if these '
                'are OpenAI weights.',
                file=sys.stderr)
    elif torchscript:
        options['quick_gelu'] = True
    if args.num_heads is not None:
        options['num_heads'] = args.num_heads
    if args.quick_gelu or pretrained_cfg.get('quick_gelu'):
        options['quick_gelu'] = True

    # Fails for towers MMPretrain has no config for, before writing.
    tower = mmpretrain_tower_cfg(info, **options)
    meta = dict(
        source=osp.abspath(src),
        pretrained_tag=args.src if pretrained_cfg else None,
        source_format='torchscript' if torchscript else 'state_dict',
        model_name=args.model_name,
        model_config_file=(osp.abspath(args.model_config_file)
                           if args.model_config_file else None),
        info=dict(info),
        options=dict(options),
        converter='tools/model_converters/open_clip_to_mmpretrain.py')
    save_new(dict(state_dict=converted, meta=meta), args.dst)

    arch = 'VisionTransformer + CLIPProjection' if info['arch'] == 'vit' \
        else 'ModifiedResNet'
    print(f'Converted {len(converted)} tensors ({arch}) from {src} '
          f'to {args.dst}.')
    print(f'info: {info}')
    print('\n# MMPretrain config:')
    tower = mmpretrain_tower_cfg(info, checkpoint=args.dst, **options)
    print('backbone = ' + pprint.pformat(tower['backbone'], sort_dicts=False))
    print('neck = ' + pprint.pformat(tower['neck'], sort_dicts=False))


if __name__ == '__main__':
    main()
