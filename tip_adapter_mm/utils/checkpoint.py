"""MMEngine checkpoints under torch >= 2.6 (``weights_only=True`` loads).

torch >= 2.6 loads with ``weights_only=True``: its restricted unpickler
refuses every global that is not allow-listed, and MMEngine's ``resume`` and
``load_from`` then fail on what MMEngine itself writes into a checkpoint
(the message hub's ``HistoryBuffer``, NumPy arrays and scalars of logged
values). This module registers, through MMEngine's own
``CheckpointLoader.register_scheme``, a loader for local files that keeps
``weights_only=True`` and allow-lists exactly those types for the duration
of the load. Any other pickled object is still refused.
"""
import os.path as osp
from typing import Any, List

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader


def mmengine_checkpoint_globals() -> List[Any]:
    """The non-tensor globals of an MMEngine checkpoint.

    ``getattr`` is needed because ``HistoryBuffer`` pickles its statistics
    methods as ``getattr(HistoryBuffer, 'mean')``; the restricted unpickler
    still refuses to call anything that is not allow-listed.
    """
    numpy_dtypes = [
        getattr(np.dtypes, name) for name in dir(np.dtypes)
        if name.endswith('DType')
    ]
    return [
        HistoryBuffer,
        getattr,
        np.core.multiarray._reconstruct,
        np.core.multiarray.scalar,
        np.ndarray,
        np.dtype,
        *numpy_dtypes,
    ]


def load_from_local_weights_only(filename: str, map_location=None) -> Any:
    """Load a local MMEngine checkpoint with ``weights_only=True``."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(
            f'Checkpoint {filename!r} does not exist; expected a .pth file '
            'written by MMEngine (e.g. work_dirs/<config>/epoch_20.pth).')
    with torch.serialization.safe_globals(mmengine_checkpoint_globals()):
        return torch.load(
            filename, map_location=map_location, weights_only=True)


def allow_mmengine_checkpoint_globals() -> None:
    """Make MMEngine load local checkpoints with
    :func:`load_from_local_weights_only` (idempotent)."""
    CheckpointLoader.register_scheme(
        prefixes='', loader=load_from_local_weights_only, force=True)
