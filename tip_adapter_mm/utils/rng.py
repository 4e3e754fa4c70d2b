"""Per-sample random state, independent of process count and workers."""
import hashlib
import random
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch


def derive_seed(*parts: int) -> int:
    """Hash integers into a 32-bit seed, e.g. ``(seed, view, sample_idx)``.

    The result depends only on ``parts``, never on the rank, the worker or
    the order in which samples are visited.
    """
    text = ','.join(str(int(p)) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], 'little')


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's global generators inside the block.

    Transforms of MMPretrain/MMCV draw from these global generators. The
    previous states are restored on exit, so the surrounding code (a
    sampler, another dataset) sees its generators untouched. Only torch's
    CPU generator is seeded; CUDA generators are left alone.
    """
    py_state = random.getstate()
    np_state = np.random.get_state()
    torch_state = torch.random.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)
