"""Loader workers and torch threads chosen from the machine.

On a 2-core machine the default runs (4-8 loader workers, torch's default
of one thread per core) were 5-7 times slower than with
``OMP_NUM_THREADS=1``: the threads of the main process and the loader
workers of every rank fought over the same cores. :func:`cpu_plan` shares
the cores the process may use among the ranks of the machine, then, within
one rank's share, between the loader workers and the torch threads:

* no GPU: the encoders run on the CPU threads and decoding the images is a
  small part of the work, so a rank keeps one worker per four cores beyond
  the first (none up to four cores), one core for its own Python work
  (collating, and decoding when it has no worker) and gives the rest to
  torch: 1 thread on 2 cores, which measured fastest there
  (``OMP_NUM_THREADS=1``); 12 threads and 3 workers on 16;
* GPUs: the CPU only prepares batches, so a rank gives all but one of its
  cores to loader workers (at least one, at most
  :data:`MAX_AUTO_WORKERS`) and the remaining ones to torch.

In both cases ``threads + workers <= max(2, cores // local_ranks)``:
the process's cores are never oversubscribed (threads and workers are at
least 1 and 0).

Configs ask for it with ``num_workers='auto'`` in a dataloader (the
``configs/_base_/`` datasets do) and ``env_cfg.torch_threads`` (absent or
``'auto'``); a number in either is kept, and ``OMP_NUM_THREADS`` in the
environment keeps torch's threads as that variable set them.
"""
import os
from typing import Any, NamedTuple, Optional

#: ``num_workers='auto'`` never asks for more workers than this.
MAX_AUTO_WORKERS = 8
#: The value that asks for the automatic choice.
AUTO = 'auto'


class CpuPlan(NamedTuple):
    """What :func:`cpu_plan` chose, and from what."""
    cores: int
    gpus: int
    local_ranks: int
    workers: int
    threads: int

    def describe(self) -> str:
        """One line: the inputs and the choice."""
        return (f'{self.cores} CPU core(s) available, {self.gpus} GPU(s), '
                f'{self.local_ranks} process(es) on this machine: '
                f"num_workers='auto' gives {self.workers} loader worker(s), "
                f"torch_threads='auto' {self.threads} thread(s) per process")


def cpu_plan(cores: int, gpus: int, local_ranks: int) -> CpuPlan:
    """The workers per ``'auto'`` loader and torch threads per rank.

    Args:
        cores (int): CPU cores this process may run on
            (``len(os.sched_getaffinity(0))``).
        gpus (int): GPUs visible to the process (0 on a CPU machine).
        local_ranks (int): processes of the run on this machine.

    Raises:
        ValueError: a count below 1 (0 for ``gpus``).
    """
    if cores < 1 or local_ranks < 1 or gpus < 0:
        raise ValueError(
            f'cpu_plan: expected cores >= 1, gpus >= 0, local_ranks >= 1; '
            f'got cores={cores}, gpus={gpus}, local_ranks={local_ranks}.')
    share = max(1, cores // local_ranks)
    if gpus > 0:
        workers = min(MAX_AUTO_WORKERS, max(1, share - 1))
        threads = max(1, share - workers)
    else:
        workers = min(MAX_AUTO_WORKERS, (share - 1) // 4)
        threads = max(1, share - workers - 1)
    return CpuPlan(cores, gpus, local_ranks, workers, threads)


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, which
    container and scheduler limits narrow; ``os.cpu_count()`` where the
    platform has no affinity)."""
    if hasattr(os, 'sched_getaffinity'):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def local_ranks() -> int:
    """The processes of the run on this machine: ``LOCAL_WORLD_SIZE``
    (torchrun), else ``SLURM_NTASKS_PER_NODE`` (srun), else 1."""
    for key in ('LOCAL_WORLD_SIZE', 'SLURM_NTASKS_PER_NODE'):
        value = os.environ.get(key, '')
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def machine_cpu_plan() -> CpuPlan:
    """:func:`cpu_plan` of this machine and run."""
    import torch
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return cpu_plan(available_cores(), gpus, local_ranks())


def resolve_num_workers(value: Any, plan: Optional[CpuPlan] = None,
                        where: str = 'num_workers') -> int:
    """``value`` if it is a number, else (``'auto'``) the workers of
    ``plan`` (default: this machine's).

    Raises:
        ValueError: ``value`` is neither a non-negative integer nor
            ``'auto'`` (``where`` names the key).
    """
    if value == AUTO:
        return (plan or machine_cpu_plan()).workers
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where}={value!r}: expected 'auto' or an "
                         'integer >= 0.')
    return value


def resolve_torch_threads(value: Any, plan: CpuPlan,
                          where: str = 'env_cfg.torch_threads',
                          omp_num_threads: Optional[str] = None
                          ) -> Optional[int]:
    """The torch threads to set: ``None`` (leave torch's) when ``value``
    is None or ``OMP_NUM_THREADS`` is set in the environment, ``value``
    if it is a number, the plan's threads for ``'auto'``.

    Args:
        omp_num_threads (str, optional): ``OMP_NUM_THREADS`` as the user's
            environment had it (default: ``os.environ``'s now; MMEngine
            sets it to 1 in a distributed run that lacks it).

    Raises:
        ValueError: ``value`` is neither None, ``'auto'`` nor an integer
            >= 1.
    """
    if value is None:
        return None
    if value != AUTO and (isinstance(value, bool)
                          or not isinstance(value, int) or value < 1):
        raise ValueError(f"{where}={value!r}: expected 'auto', None or an "
                         'integer >= 1.')
    if omp_num_threads is None:
        omp_num_threads = os.environ.get('OMP_NUM_THREADS')
    if omp_num_threads:
        return None
    return plan.threads if value == AUTO else value


def auto_loader_cfg(loader_cfg: dict, plan: Optional[CpuPlan] = None,
                    where: str = 'num_workers') -> dict:
    """A copy of a dataloader config with ``num_workers`` an integer
    (:func:`resolve_num_workers`); for 0 workers the options PyTorch's
    DataLoader refuses without workers (``persistent_workers=True``,
    ``prefetch_factor``) are dropped."""
    cfg = dict(loader_cfg)
    if 'num_workers' not in cfg:
        return cfg
    cfg['num_workers'] = resolve_num_workers(cfg['num_workers'], plan, where)
    if cfg['num_workers'] == 0 and loader_cfg.get('num_workers') == AUTO:
        cfg.pop('prefetch_factor', None)
        if cfg.get('persistent_workers'):
            cfg['persistent_workers'] = False
    return cfg
