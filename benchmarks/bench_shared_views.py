"""Benchmark the memory of Tip-Adapter-F's stored views per process: read
into each process vs memory-mapped and shared, for 1 and 2 processes.

A synthetic views file is written with the package's own writer
(``FeatureStore.save``): ``--classes x --shots`` images, ``--views``
augmented views each, ``--dim`` float32 features (the defaults give 313 MiB;
ImageNet at 16 shots is ``--classes 1000``: 626 MiB, 655 million bytes).
Then, for ``mmap=False`` (every process reads its own copy, as before) and
``mmap=True`` (``CachedViewsDataset``'s default), 1 and 2 processes
(spawned, joined by a gloo process group as the ranks of a distributed run
are) each build ``CachedViewsDataset`` from the file and read it for
``--epochs`` epochs as Tip-Adapter-F's training does: ``ViewCyclingSampler``,
a ``DataLoader`` of ``--global-batch-size // processes`` samples with
``pseudo_collate``, and ``FeatureOrImageDataPreprocessor`` stacking each
batch.

Every rank reads its own memory from ``/proc/self/smaps_rollup`` and
``/proc/self/status`` (Linux only), relative to a baseline taken after its
imports and before it reads the file:

* peak RSS: the kernel's high-water mark (``VmHWM``) minus the baseline RSS;
* RSS, PSS (proportional set size: a page shared by k processes counts 1/k
  in each) and USS (private pages: ``Private_Clean + Private_Dirty``) while
  all ranks hold the dataset, after the epochs (the ranks wait for each
  other first, so that the pages shared by both are counted as shared), and
  the largest PSS and USS sampled after every batch;
* anonymous memory (``Anonymous``): the copies a process made for itself.

The summary compares the totals over the ranks: with memory mapping, two
processes' private memory of the views is not twice one process's, and each
rank's PSS is about half of one process's.

Reading the numbers: RSS counts shared pages in full, so it is the same
either way; PSS sums over the processes to what the machine holds. A single
process that maps the file has its pages as private (``Private_Clean``: page
cache that nobody else maps, which the kernel can drop and read again), not
as anonymous memory; the anonymous column shows the copies. The load and
epoch times are for information only (other processes on the machine
distort them), not a target.

Usage::

    python benchmarks/bench_shared_views.py            # 313 MiB, ~2 min
    python benchmarks/bench_shared_views.py --classes 1000   # ImageNet
"""
import argparse
import gc
import os
import os.path as osp
import platform
import shutil
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

from common import add_out_arg, cpu_model, new_parser, write_json

MIB = 2**20
#: Fields of /proc/self/smaps_rollup that the benchmark keeps (kB).
ROLLUP = ('Rss', 'Pss', 'Private_Clean', 'Private_Dirty', 'Shared_Clean',
          'Shared_Dirty', 'Anonymous')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = new_parser(__doc__)
    add_out_arg(parser, 'bench_shared_views.json')
    add = parser.add_argument
    add('--classes', type=int, default=500, help='classes')
    add('--shots', type=int, default=16, help='images per class')
    add('--views', type=int, default=10,
        help='augmented views per image (few_shot_cfg.augment_epoch)')
    add('--dim', type=int, default=1024, help='feature dimension')
    add('--processes', type=int, nargs='+', default=[1, 2],
        help='process counts to run')
    add('--epochs', type=int, default=1, help='epochs each rank reads')
    add('--global-batch-size', type=int, default=256,
        help='train_cfg.global_batch_size (split over the processes)')
    add('--dir', default=None,
        help='folder for the views file (default: a temporary folder, '
        'removed afterwards); it must have room for the file')
    add('--timeout', type=float, default=600,
        help='seconds allowed for one group of processes')
    return parser.parse_args(argv)


# -- memory -------------------------------------------------------------------
def memory() -> Dict[str, int]:
    """This process's memory in bytes: the :data:`ROLLUP` fields of
    ``/proc/self/smaps_rollup``, ``Uss`` (their private pages) and, from
    ``/proc/self/status``, ``VmHWM`` (peak RSS)."""
    out = {}
    with open('/proc/self/smaps_rollup') as f:
        for line in f:
            key, _, rest = line.partition(':')
            if key in ROLLUP:
                out[key] = int(rest.split()[0]) * 1024
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                out['VmHWM'] = int(line.split()[1]) * 1024
    out['Uss'] = out['Private_Clean'] + out['Private_Dirty']
    return out


# -- one rank -----------------------------------------------------------------
def rank_main(rank: int, world_size: int, init_file: str, views_file: str,
              args: argparse.Namespace, mmap: bool, results) -> None:
    """Build ``CachedViewsDataset(views_file, mmap=mmap)``, read
    ``args.epochs`` epochs as training does, and put this rank's memory
    (relative to its baseline) and times on ``results``."""
    import warnings
    warnings.filterwarnings('ignore', message='Fail to import')  # mmcv-lite
    import torch
    import torch.distributed as dist
    from mmengine.dataset import pseudo_collate
    from torch.utils.data import DataLoader

    from tip_adapter_mm.datasets import CachedViewsDataset, ViewCyclingSampler
    from tip_adapter_mm.models import FeatureOrImageDataPreprocessor
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}',
                            rank=rank, world_size=world_size)
    preprocessor = FeatureOrImageDataPreprocessor()
    gc.collect()
    dist.barrier()
    base = memory()

    start = time.perf_counter()
    dataset = CachedViewsDataset(views_file, num_views=args.views, mmap=mmap)
    load_s = time.perf_counter() - start
    built = memory()
    sampler = ViewCyclingSampler(dataset, shuffle=True, seed=0)
    loader = DataLoader(dataset,
                        batch_size=args.global_batch_size // world_size,
                        sampler=sampler, collate_fn=pseudo_collate,
                        num_workers=0)
    dist.barrier()  # every rank has mapped (or read) the file
    peak = {k: v for k, v in memory().items()}
    checksum, batches = 0.0, 0
    start = time.perf_counter()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for batch in loader:
            feats = preprocessor(batch, True)['feats'][0]
            checksum += float(feats.sum())
            batches += 1
            now = memory()
            for key in ('Pss', 'Uss', 'Rss', 'Anonymous'):
                peak[key] = max(peak[key], now[key])
    epoch_s = (time.perf_counter() - start) / args.epochs
    dist.barrier()  # all ranks hold the dataset and have read their epochs
    held = memory()
    dist.barrier()  # nobody leaves before everybody has measured
    results.put(dict(
        rank=rank, mmap=mmap, processes=world_size, load_s=load_s,
        epoch_s=epoch_s, batches=batches, checksum=checksum,
        baseline_rss=base['Rss'],
        peak_rss=held['VmHWM'] - base['Rss'],
        built_rss=built['Rss'] - base['Rss'],
        rss=held['Rss'] - base['Rss'], pss=held['Pss'] - base['Pss'],
        uss=held['Uss'] - base['Uss'],
        anonymous=held['Anonymous'] - base['Anonymous'],
        peak_pss=peak['Pss'] - base['Pss'],
        peak_uss=peak['Uss'] - base['Uss'],
        peak_anonymous=peak['Anonymous'] - base['Anonymous']))
    del loader, sampler, dataset
    dist.destroy_process_group()


def run_group(world_size: int, views_file: str, args: argparse.Namespace,
              mmap: bool, work: str) -> List[dict]:
    """Spawn ``world_size`` ranks of :func:`rank_main`; their results,
    ordered by rank."""
    import multiprocessing as mp
    ctx = mp.get_context('spawn')
    results = ctx.Queue()
    init_file = osp.join(work, f'init_{world_size}_{int(mmap)}_{time.time()}')
    procs = [
        ctx.Process(target=rank_main,
                    args=(rank, world_size, init_file, views_file, args,
                          mmap, results)) for rank in range(world_size)
    ]
    for p in procs:
        p.start()
    out = [results.get(timeout=args.timeout) for _ in procs]
    for p in procs:
        p.join(args.timeout)
        if p.exitcode != 0:
            raise RuntimeError(f'A rank of {world_size} (mmap={mmap}) '
                               f'exited with {p.exitcode}.')
    return sorted(out, key=lambda r: r['rank'])


# -- the views file -----------------------------------------------------------
def write_views(root: str, args: argparse.Namespace) -> str:
    """A stored views file of the requested size, written by
    ``FeatureStore.save``; returns its path."""
    import torch

    from tip_adapter_mm.engine import FeatureStore
    from tip_adapter_mm.structures import EncodedFeatures
    images = args.classes * args.shots
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(args.views * images, args.dim, generator=g)
    # View-major rows (row v * S + s is view v of image s), as encoded.
    labels = (torch.arange(images) // args.shots).repeat(args.views)
    description = dict(kind='benchmark_views', classes=args.classes,
                       shots=args.shots, views=args.views, dim=args.dim)
    return FeatureStore(root).save('support_views', description,
                                   EncodedFeatures((feats, ), labels))


# -- report -------------------------------------------------------------------
def summarise(runs: List[dict], file_size: int) -> dict:
    """Totals over the ranks of every (mmap, processes) run, and the
    ratios of 2 processes to 1."""
    groups = {}
    for r in runs:
        key = (r['mmap'], r['processes'])
        g = groups.setdefault(key, dict(
            mmap=r['mmap'], processes=r['processes'], total_uss=0,
            total_pss=0, total_anonymous=0, max_peak_rss=0, pss_per_rank=0))
        g['total_uss'] += r['uss']
        g['total_pss'] += r['pss']
        g['total_anonymous'] += r['anonymous']
        g['max_peak_rss'] = max(g['max_peak_rss'], r['peak_rss'])
    for g in groups.values():
        g['pss_per_rank'] = g['total_pss'] / g['processes']
    ratios = {}
    for mmap in (False, True):
        one, two = groups.get((mmap, 1)), groups.get((mmap, 2))
        if one and two:
            name = 'mmap' if mmap else 'read'
            ratios[name] = dict(
                total_uss_2_over_1=two['total_uss'] / max(one['total_uss'], 1),
                total_pss_2_over_1=two['total_pss'] / max(one['total_pss'], 1),
                pss_per_rank_2_over_1=(two['pss_per_rank']
                                       / max(one['pss_per_rank'], 1)))
    return dict(file_mib=file_size / MIB, groups=list(groups.values()),
                ratios=ratios)


def print_table(runs: List[dict], summary: dict, machine: dict) -> None:
    """A Markdown table per rank, then the totals and ratios."""
    print(f'\nMachine: {machine["cpu"]}, {machine["cores"]} cores, '
          f'{machine["memory_gb"]:.0f} GiB; torch {machine["torch"]}. '
          f'Views file: {summary["file_mib"]:.0f} MiB.\n')
    print('| read | processes | rank | load s | epoch s | peak RSS MiB | '
          'RSS MiB | PSS MiB | USS MiB | anon MiB | peak PSS MiB | '
          'peak USS MiB |')
    print('|---|---|---|---|---|---|---|---|---|---|---|---|')
    for r in runs:
        print(f'| {"mmap" if r["mmap"] else "read"} | {r["processes"]} | '
              f'{r["rank"]} | {r["load_s"]:.2f} | {r["epoch_s"]:.2f} | '
              + ' | '.join(f'{r[k] / MIB:.0f}' for k in (
                  'peak_rss', 'rss', 'pss', 'uss', 'anonymous', 'peak_pss',
                  'peak_uss')) + ' |')
    print('\n| read | processes | total USS MiB | total PSS MiB | '
          'PSS per rank MiB | total anon MiB |')
    print('|---|---|---|---|---|---|')
    for g in summary['groups']:
        print(f'| {"mmap" if g["mmap"] else "read"} | {g["processes"]} | '
              f'{g["total_uss"] / MIB:.0f} | {g["total_pss"] / MIB:.0f} | '
              f'{g["pss_per_rank"] / MIB:.0f} | '
              f'{g["total_anonymous"] / MIB:.0f} |')
    for name, r in summary['ratios'].items():
        print(f'\n{name}: 2 processes / 1 process: total USS '
              f'{r["total_uss_2_over_1"]:.2f}x, total PSS '
              f'{r["total_pss_2_over_1"]:.2f}x, PSS per rank '
              f'{r["pss_per_rank_2_over_1"]:.2f}x')
    print('(MiB = 2^20 bytes; each relative to the rank\'s memory before it '
          'read the file; RSS/PSS/USS while all ranks hold the dataset.)')


def machine_info() -> dict:
    """CPU, cores, memory and versions."""
    import torch
    with open('/proc/meminfo') as f:
        total_kb = int(f.readline().split()[1])
    return dict(cpu=cpu_model(), cores=os.cpu_count(),
                memory_gb=total_kb / 2**20, torch=torch.__version__,
                python=platform.python_version(), os=platform.platform())


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    if not osp.exists('/proc/self/smaps_rollup'):
        sys.exit('This benchmark reads /proc/self/smaps_rollup: Linux only.')
    if any(args.global_batch_size % n for n in args.processes):
        sys.exit(f'--global-batch-size {args.global_batch_size} is not '
                 f'divisible by every one of --processes {args.processes}.')
    work = tempfile.mkdtemp(prefix='bench_shared_views_', dir=args.dir)
    try:
        start = time.perf_counter()
        views_file = write_views(work, args)
        size = os.path.getsize(views_file)
        print(f'Wrote {views_file} ({size / MIB:.0f} MB) in '
              f'{time.perf_counter() - start:.1f} s.')
        gc.collect()
        runs = []
        for mmap in (False, True):
            for n in args.processes:
                runs += run_group(n, views_file, args, mmap, work)
        summary = summarise(runs, size)
        machine = machine_info()
        print_table(runs, summary, machine)
        result = dict(machine=machine, args=vars(args), file_bytes=size,
                      runs=runs, summary=summary)
        write_json(args.out, result)
        print(f'\nWrote {args.out}.')
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
