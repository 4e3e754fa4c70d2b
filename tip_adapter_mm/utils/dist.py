"""Distributed set-up for the tools: NCCL on GPUs, gloo on CPU."""
import logging
import os
import sys

import torch
import torch.distributed as torch_dist
from mmengine.config import Config


def setup_distributed(cfg: Config, launcher: str) -> None:
    """Prepare ``cfg`` (and the process group on CPU) for ``launcher``.

    With GPUs nothing changes: MMEngine's Runner initialises NCCL itself.
    Without a GPU, MMEngine's launcher would call ``torch.cuda.set_device``,
    so the gloo process group is initialised here from the environment
    ``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
    ``MASTER_PORT``), the Runner then finds it initialised, and the DDP
    wrapper is told ``device_ids=None``.
    """
    if launcher == 'none' or torch.cuda.is_available():
        return
    if launcher != 'pytorch':
        raise ValueError(
            f'--launcher {launcher!r} is not supported without a GPU; use '
            "'pytorch' (tools/dist_train.sh, tools/dist_test.sh) or 'none'.")
    cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})
    cfg.env_cfg.dist_cfg['backend'] = 'gloo'
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(
            backend='gloo',
            rank=int(os.environ['RANK']),
            world_size=int(os.environ['WORLD_SIZE']))
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel',
        broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper = dict(wrapper)
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper


def teardown_distributed() -> None:
    """End a distributed run cleanly: wait for every rank, destroy the
    process group and exit the process with status 0 (the tools call it
    last, after a successful run). Without it a rank can abort at
    interpreter exit (gloo's threads are still up: "terminate called
    without an active exception") after all its work is done. Nothing
    happens in a run without a process group."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.barrier()
        torch_dist.destroy_process_group()
        # Every rank's work is done and written; a C++ thread of the
        # collective backends that outlives the interpreter can still abort
        # the process at exit ("terminate called without an active
        # exception", exit code -6, seen once on a loaded 2-core machine),
        # which would turn a finished run into a failed one: flush and leave
        # without the interpreter's teardown.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
