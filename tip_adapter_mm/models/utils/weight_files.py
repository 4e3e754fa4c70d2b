"""Errors about weight files that name the file, what read it and what
was expected, whatever library raised underneath (its error stays the
``__cause__``)."""
import os.path as osp
import re
from typing import Any, Dict

import torch

from ...utils.checkpoint import mmengine_checkpoint_globals


class CheckpointFileError(RuntimeError):
    """A weight file that cannot be used, naming the file, what read it
    and what was expected. The library's own error is ``__cause__``."""

    def __init__(self, path: str, reader: str, reason: str) -> None:
        super().__init__(
            f'Checkpoint {path!r} cannot be loaded as the weights of '
            f'{reader}: {reason}')
        self.path = path
        self.reason = reason


def read_weight_file(path: str) -> Any:
    """``torch.load`` of ``path`` on the CPU with ``weights_only=True`` and
    the allow-list of MMEngine checkpoints' own types
    (:mod:`tip_adapter_mm.utils.checkpoint`); ``.safetensors`` through
    safetensors. Raises what the loader raises."""
    if str(path).endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(path, device='cpu')
    with torch.serialization.safe_globals(mmengine_checkpoint_globals()):
        return torch.load(path, map_location='cpu', weights_only=True)


def is_mmengine_checkpoint(loaded: Any) -> bool:
    """Whether a loaded file is a checkpoint MMEngine's Runner wrote (a
    dict with ``state_dict`` and ``meta`` or ``message_hub``)."""
    return (isinstance(loaded, dict) and 'state_dict' in loaded
            and ('meta' in loaded or 'message_hub' in loaded))


MMENGINE_CHECKPOINT_HINT = (
    'this is an MMEngine checkpoint of a trained model (a dict with '
    "'state_dict' and 'meta'): pass it to tools/test.py as CHECKPOINT "
    '(or set load_from), not as pretrained, which takes the weights of '
    'the encoder alone.')


def shape_differences(expected: Dict[str, torch.Size],
                      found: Dict[str, Any], limit: int = 8) -> str:
    """Missing keys, unexpected keys and shape mismatches between a
    module's ``{key: shape}`` and a state dict, the first ``limit`` of
    each; '' when they agree."""
    found_shapes = {k: tuple(getattr(v, 'shape', ())) for k, v in
                    found.items()}
    missing = [k for k in expected if k not in found_shapes]
    unexpected = [k for k in found_shapes if k not in expected]
    mismatched = [f'{k}: expected {list(expected[k])}, found '
                  f'{list(found_shapes[k])}' for k in expected
                  if k in found_shapes
                  and tuple(expected[k]) != found_shapes[k]]
    parts = []
    for what, keys in (('shape mismatches', mismatched),
                       ('missing keys', missing),
                       ('unexpected keys', unexpected)):
        if keys:
            more = (f' (+{len(keys) - limit} more)'
                    if len(keys) > limit else '')
            parts.append(f'{what} ({len(keys)}): '
                         + '; '.join(keys[:limit]) + more)
    return '. '.join(parts)


def underlying(err: BaseException) -> str:
    """``(Type: first line of the message)`` of the library's error (the
    whole of it stays in ``__cause__``)."""
    text = str(err).strip()
    refused = re.search(r'Unsupported global: GLOBAL (\S+)', text)
    if refused:  # torch's weights_only refusal: name what it refused
        return (f'({type(err).__name__}: the safe load refused '
                f'{refused.group(1)})')
    lines = text.splitlines()
    return f'({type(err).__name__}: {lines[0] if lines else "-"})'


def load_failure_reason(path: str, err: BaseException,
                        expected: Dict[str, torch.Size],
                        expected_text: str) -> str:
    """Why ``path`` failed to load (``err``, the library's error) into a
    module whose state dict has the shapes ``expected``: no such file,
    not a checkpoint, a safe-load (``weights_only``) refusal, or the keys
    and shapes that differ. ``expected_text`` says what the file should
    be."""
    underneath = underlying(err)
    if not osp.isfile(osp.expanduser(path)):
        return f'the file does not exist; expected {expected_text}.'
    try:
        loaded = read_weight_file(osp.expanduser(path))
    except Exception as load_err:
        refused = re.search(r'Unsupported global: GLOBAL (\S+)',
                            str(load_err))
        if refused:
            return (f'it holds a Python object ({refused.group(1)}) that '
                    'a safe load (weights_only=True) refuses; only tensors '
                    'and the types MMEngine itself writes into checkpoints '
                    f'are allowed. Expected {expected_text}. {underneath}')
        return (f'it is not a readable checkpoint (truncated, or not a '
                f'torch file); expected {expected_text}. {underneath}')
    state = loaded.get('state_dict', loaded) if isinstance(
        loaded, dict) else None
    if not isinstance(state, dict):
        return (f'it holds a {type(loaded).__name__}, not a state dict; '
                f'expected {expected_text}. {underneath}')
    state = {(k[len('module.'):] if k.startswith('module.') else k): v
             for k, v in state.items()}
    diff = shape_differences(expected, state)
    return (f'it is not a checkpoint of this model ({diff}); expected '
            f'{expected_text}. {underneath}' if diff else
            f'expected {expected_text}. {underneath}')
