"""Fail loudly where MMEngine's ``Pretrained`` init would only warn.

MMEngine's ``PretrainedInit`` loads with ``strict=False``: a missing key or
a shape mismatch is logged and the module keeps its random weights.
:func:`check_pretrained` repeats the lookup without loading anything and
raises instead.
"""
import os
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .weight_files import CheckpointFileError, load_failure_reason

InitCfg = Union[dict, Sequence[dict], None]


def _pretrained_cfgs(init_cfg: InitCfg) -> List[dict]:
    if init_cfg is None:
        return []
    cfgs = [init_cfg] if isinstance(init_cfg, dict) else list(init_cfg)
    return [
        cfg for cfg in cfgs
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained'
    ]


def _checkpoint_state_dict(checkpoint: str, prefix: Optional[str],
                           map_location: str) -> Dict[str, torch.Tensor]:
    """The state dict ``PretrainedInit`` would hand to ``load_state_dict``
    (same functions, same unwrapping)."""
    from mmengine.runner.checkpoint import (_load_checkpoint,
                                            _load_checkpoint_with_prefix)
    if prefix is None:
        loaded = _load_checkpoint(checkpoint, map_location=map_location)
        if not isinstance(loaded, dict):
            raise ValueError(
                f'No state_dict found in checkpoint file {checkpoint!r}.')
        state_dict = loaded.get('state_dict', loaded)
        # load_checkpoint's default revise_keys.
        return OrderedDict(
            (re.sub(r'^module\.', '', k), v) for k, v in state_dict.items())
    try:
        return _load_checkpoint_with_prefix(
            prefix, checkpoint, map_location=map_location)
    except AssertionError:  # MMEngine asserts the prefix matched something
        return OrderedDict()


def _apply_load_pre_hooks(module: nn.Module,
                          state_dict: Dict[str, torch.Tensor]) -> None:
    """Run the modules' ``load_state_dict`` pre-hooks on ``state_dict``
    (e.g. MMPretrain's ViT resizes ``pos_embed`` there), as loading would.
    Only the dict is modified, never the module's tensors."""
    for name, sub in module.named_modules():
        hooks = getattr(sub, '_load_state_dict_pre_hooks', None)
        if not hooks:
            continue
        prefix = f'{name}.' if name else ''
        for hook in list(hooks.values()):
            hook(state_dict, prefix, {}, True, [], [], [])


def check_pretrained(module: nn.Module, init_cfg: InitCfg, name: str) -> None:
    """Check that ``init_cfg``'s ``Pretrained`` checkpoints fill ``module``.

    For each ``dict(type='Pretrained', checkpoint=..., prefix=...)`` entry
    of ``init_cfg`` (a dict or a list of dicts; other entries are ignored),
    the checkpoint is read as MMEngine's ``PretrainedInit`` reads it
    (``_load_checkpoint`` + ``'state_dict'`` unwrapping + ``module.``
    stripping, or ``_load_checkpoint_with_prefix`` when ``prefix`` is set)
    and compared with ``module.state_dict()``. Checkpoint keys the module
    lacks (e.g. a classifier's ``fc``) are fine; ``num_batches_tracked``
    buffers are not required. Nothing is loaded into ``module``.

    Args:
        module (nn.Module): The module ``init_cfg`` initialises.
        init_cfg (dict | list[dict] | None): Its init config.
        name (str): The module's name in messages, e.g. 'model.backbone'.

    Raises:
        FileNotFoundError: A local checkpoint file does not exist.
        CheckpointFileError: It cannot be read (not a checkpoint, or
            objects that the safe ``weights_only`` load refuses), naming
            the file; the loader's error is its ``__cause__``.
        ValueError: Module keys missing from the checkpoint, or tensors
            whose shapes differ (``key: expected (module) vs found
            (checkpoint)``).
    """
    expected: Dict[str, Tuple[int, ...]] = OrderedDict(
        (k, tuple(v.shape)) for k, v in module.state_dict().items()
        if not k.endswith('num_batches_tracked'))
    for cfg in _pretrained_cfgs(init_cfg):
        checkpoint = cfg.get('checkpoint')
        prefix = cfg.get('prefix')
        if not isinstance(checkpoint, str) or not checkpoint:
            raise ValueError(f'{name}: Pretrained init_cfg {cfg} has no '
                             'checkpoint path.')
        if '://' not in checkpoint and not os.path.isfile(
                os.path.expanduser(checkpoint)):
            raise FileNotFoundError(
                f'{name}: Pretrained checkpoint {checkpoint!r} (prefix '
                f'{prefix!r}) does not exist.')
        try:
            state_dict = _checkpoint_state_dict(
                checkpoint, prefix, cfg.get('map_location', 'cpu'))
        except Exception as err:  # unreadable, refused by the safe load
            raise CheckpointFileError(
                checkpoint, f"{name}'s init_cfg Pretrained (prefix "
                f'{prefix!r})',
                load_failure_reason(
                    checkpoint, err, expected,
                    f'weights of {type(module).__name__}: a state dict, or '
                    "an MMEngine checkpoint with a 'state_dict' (give "
                    "prefix='backbone.' to take the backbone of a trained "
                    'model)')) from err
        state_dict = OrderedDict(state_dict)
        _apply_load_pre_hooks(module, state_dict)

        missing = [k for k in expected if k not in state_dict]
        mismatched = [(k, shape, tuple(state_dict[k].shape))
                      for k, shape in expected.items()
                      if k in state_dict and hasattr(state_dict[k], 'shape')
                      and tuple(state_dict[k].shape) != shape]
        if not missing and not mismatched:
            continue
        lines = [
            f'{name}: checkpoint {checkpoint!r} (prefix {prefix!r}) '
            'does not match the module; MMEngine would load it with '
            'strict=False and keep random weights for:'
        ]
        if missing:
            shown = ', '.join(missing[:50])
            more = f' (+{len(missing) - 50} more)' if len(missing) > 50 \
                else ''
            lines.append(f'  missing keys ({len(missing)}): {shown}{more}')
        if mismatched:
            lines.append(f'  shape mismatches ({len(mismatched)}):')
            lines += [
                f'    {k}: expected {list(e)}, found {list(f)}'
                for k, e, f in mismatched[:50]
            ]
        if missing and len(missing) == len(expected):
            lines.append(
                '  (no key matched; does the checkpoint need a prefix such '
                "as 'backbone.'?)" if prefix is None else
                f'  (no checkpoint key matched under prefix {prefix!r})')
        raise ValueError('\n'.join(lines))
