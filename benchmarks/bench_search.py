"""Benchmark the (beta, alpha) search against the reference per-pair loop.

Tip-Adapter's search visits every point of a 200 x 20 grid. The reference
code runs one full forward per point (affinities, the cache term's
exponential and its product with the one-hot values, zero-shot logits,
top-1). ``grid_search`` computes the exponentials once per beta, sums them
per class (the values are one-hot) and counts hits for all alphas at once,
in blocks bounded by ``max_elements``.

For each problem size (random clustered features; ``K`` keys per class),
in one run and side by side (A, B, A, B, ... after a warm-up, medians):

* ``grid_search`` over the whole grid;
* the reference loop on a spread subset of the grid's pairs (every
  ``beta`` stride, every ``alpha`` stride), its time per pair extrapolated
  to the whole grid (said so in the table), and its counts compared with
  ``grid_search``'s on the pairs it ran;
* the peak memory of ``grid_search`` (RSS increase of a fresh process) at
  several ``max_elements``, beside the temporaries it allows
  (``20 * min(max_elements, block_elements)`` bytes; the rest is the
  chunk's zero-shot logits and the allocator's slack).

Usage (defaults: the issue's sizes, 2 torch threads, about 3 minutes on an
idle 2-core CPU)::

    python benchmarks/bench_search.py
    python benchmarks/bench_search.py --device cuda \
        --sizes 10000x16000x1000x1024
"""
import argparse
import gc
import inspect
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from common import (add_out_arg, cpu_model, cpu_seconds, new_parser,
                    other_cpu_share, write_json)

from tip_adapter_mm.engine import grid_search
from tip_adapter_mm.models.heads import TipAdapterHead
from tip_adapter_mm.models.heads.cache_model import KeyValueCache

#: Norm of the noise added to unit class centres (as bench_tip_adapter.py):
#: text prototypes, and images (keys and searched features).
SPREAD = dict(text=2.0, image=4.0)
#: Speed-up targets per size (M x NK x N x D).
TARGETS = {'1000x4096x256x512': 100.0, '100x4096x256x512': 50.0}
#: KeyValueCache.count_correct's default block_elements.
BLOCK_ELEMENTS = inspect.signature(
    KeyValueCache.count_correct).parameters['block_elements'].default


def parse_args(argv: Sequence[str] = None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    add = parser.add_argument
    add('--sizes', nargs='+',
        default=['1000x4096x256x512', '100x4096x256x512', '1000x160x10x512'],
        help='problems M x NK x N x D: searched features, keys, classes, '
        'feature dimension')
    add('--steps', type=int, nargs=2, default=(200, 20),
        metavar=('BETA', 'ALPHA'), help='grid points (Tip-Adapter: 200 x 20)')
    add('--loop-strides', type=int, nargs=2, default=(20, 5),
        metavar=('BETA', 'ALPHA'),
        help='the loop runs every BETA-th beta and ALPHA-th alpha')
    add('--max-elements', type=int, default=2**26,
        help="grid_search's max_elements in the timed runs")
    add('--memory-bounds', type=int, nargs='*',
        default=[2**16, 2**18, 2**20, 2**24],
        help='max_elements values whose peak memory is measured (largest '
        'size only; none to skip)')
    add('--repeats', type=int, default=3, help='timed rounds')
    add('--threads', type=int, default=2, help='torch CPU threads')
    add('--device', default='cpu')
    add('--seed', type=int, default=0)
    add_out_arg(parser, 'bench_search.json')
    return parser.parse_args(argv)


def parse_size(text: str) -> Tuple[int, int, int, int]:
    try:
        num, keys, classes, dim = (int(v) for v in text.split('x'))
    except ValueError:
        raise SystemExit(f'--sizes: {text!r} is not M x NK x N x D, e.g. '
                         '1000x4096x256x512') from None
    if keys % classes:
        raise SystemExit(f'--sizes {text}: NK={keys} is not a multiple of '
                         f'N={classes} (K keys per class).')
    return num, keys, classes, dim


def problem(size: Tuple[int, int, int, int], steps: Sequence[int],
            seed: int, device: torch.device):
    """A fitted ``TipAdapterHead`` and searched features with labels, all
    L2-normalised around random unit class centres (:data:`SPREAD`)."""
    num, num_keys, num_classes, dim = size
    generator = torch.Generator().manual_seed(seed)

    def around(centres: torch.Tensor, spread: float) -> torch.Tensor:
        noise = torch.randn(centres.shape, generator=generator)
        return F.normalize(centres + spread / dim**0.5 * noise,
                           dim=-1).to(device)

    centres = F.normalize(torch.randn(num_classes, dim, generator=generator),
                          dim=-1)
    key_labels = torch.randperm(num_keys, generator=generator) % num_classes
    labels = torch.randint(num_classes, (num, ), generator=generator)
    head = TipAdapterHead(num_classes, search_step=tuple(steps)).to(device)
    head.set_zero_shot_weights(around(centres, SPREAD['text']).t())
    head.cache.set(around(centres[key_labels], SPREAD['image']),
                   F.one_hot(key_labels, num_classes).float().to(device))
    return head, around(centres[labels], SPREAD['image']), labels.to(device)


@torch.no_grad()
def reference_pair(head: TipAdapterHead, feats: torch.Tensor,
                   labels: torch.Tensor, beta: float, alpha: float) -> int:
    """One point of the reference search: a full forward, top-1 hits."""
    clip_logits = head.clip_logit_scale * feats @ head.zero_shot_weights
    affinity = feats @ head.cache.keys.t()
    cache_logits = torch.exp(-beta * (1 - affinity)) @ head.cache.values
    logits = clip_logits + alpha * cache_logits
    return int((logits.argmax(dim=-1) == labels).sum())


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def bench_size(size: Tuple[int, int, int, int],
               args: argparse.Namespace) -> dict:
    """``grid_search`` against the reference loop on one problem."""
    device = torch.device(args.device)
    head, feats, labels = problem(size, args.steps, args.seed, device)
    grid = head.search_grid()
    betas, alphas = grid['beta'].tolist(), grid['alpha'].tolist()
    pairs = [(i, j) for i in range(0, len(betas), args.loop_strides[0])
             for j in range(0, len(alphas), args.loop_strides[1])]
    result = {}

    def vectorised() -> float:
        sync(device)
        start = time.perf_counter()
        result['search'] = grid_search(head, (feats, ), labels,
                                       max_elements=args.max_elements)
        sync(device)
        return time.perf_counter() - start

    def loop() -> float:
        counts = {}
        sync(device)
        start = time.perf_counter()
        for i, j in pairs:
            counts[(i, j)] = reference_pair(head, feats, labels, betas[i],
                                            alphas[j])
        sync(device)
        result['loop'] = counts
        return time.perf_counter() - start

    vectorised(), loop()  # warm-up
    times: Dict[str, List[float]] = dict(grid_search=[], loop_per_pair=[])
    for _ in range(args.repeats):
        times['grid_search'].append(vectorised())
        times['loop_per_pair'].append(loop() / len(pairs))
    num_points = len(betas) * len(alphas)
    search = result['search']
    counts = (search.accuracy_grid * len(labels) / 100).round().long()
    differing = sum(int(counts[i, j]) != c
                    for (i, j), c in result['loop'].items())
    median = statistics.median
    loop_seconds = median(times['loop_per_pair']) * num_points
    key = 'x'.join(str(v) for v in size)
    out = dict(
        size=dict(M=size[0], NK=size[1], N=size[2], D=size[3],
                  K=size[1] // size[2], grid=list(args.steps)),
        grid_search_seconds=times['grid_search'],
        loop_seconds_per_pair=times['loop_per_pair'],
        grid_search_median_seconds=median(times['grid_search']),
        loop_extrapolated_seconds=loop_seconds,
        loop_pairs_timed=len(pairs),
        speedup=median(tp * num_points / tg for tg, tp in zip(
            times['grid_search'], times['loop_per_pair'])),
        pairs_with_different_counts=differing,
        best=dict(search.best, accuracy=search.accuracy),
        target=TARGETS.get(key))
    out['met'] = None if out['target'] is None else (out['speedup']
                                                     >= out['target'])
    return out


def peak_rss() -> int:
    """This process's peak resident set size (bytes), ``VmHWM``."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) * 1024
    raise RuntimeError('No VmHWM in /proc/self/status.')


def search_peak_rss(size: Tuple[int, int, int, int], steps: Sequence[int],
                    max_elements: int, threads: int) -> int:
    """Peak RSS increase (bytes) of one ``grid_search`` in this (fresh)
    process, after a warm-up on 8 samples and a reset of the peak."""
    torch.set_num_threads(threads)
    head, feats, labels = problem(size, steps, 0, torch.device('cpu'))
    grid_search(head, (feats[:8], ), labels[:8], max_elements=max_elements)
    gc.collect()
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
    baseline = peak_rss()
    grid_search(head, (feats, ), labels, max_elements=max_elements)
    return peak_rss() - baseline


def bench_memory(size: Tuple[int, int, int, int],
                 args: argparse.Namespace) -> List[dict]:
    """Peak memory of the search at each of ``--memory-bounds``."""
    rows = []
    if args.device != 'cpu' or not sys.platform.startswith('linux'):
        return rows
    for bound in args.memory_bounds:
        with ProcessPoolExecutor(1, mp_context=get_context('spawn')) as pool:
            peak = pool.submit(search_peak_rss, size, args.steps, bound,
                               args.threads).result()
        rows.append(dict(max_elements=bound, peak_rss_increase_bytes=peak,
                         bound_bytes=20 * min(bound, BLOCK_ELEMENTS)))
    return rows


def markdown_table(results: dict) -> str:
    m = results['machine']
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} "
        f"torch threads), torch {m['torch']}, device {m['device']}; other "
        f"processes used {100 * m['other_processes_cpu_share']:.0f} % of "
        'the CPU time during the run', '',
        '| M x NK x N (D) | grid | grid_search (s) | reference loop (s, '
        'extrapolated) | speed-up | target | pairs differing |',
        '|---|---|---|---|---|---|---|'
    ]
    for row in results['sizes']:
        s = row['size']
        target = ('' if row['target'] is None else
                  f">= {row['target']:.0f}x "
                  + ('(met)' if row['met'] else '(**not met**)'))
        lines.append(
            f"| {s['M']} x {s['NK']} x {s['N']} ({s['D']}) | "
            f"{s['grid'][0]} x {s['grid'][1]} | "
            f"{row['grid_search_median_seconds']:.3f} | "
            f"{row['loop_extrapolated_seconds']:.1f} (from "
            f"{row['loop_pairs_timed']} pairs) | {row['speedup']:.0f}x | "
            f"{target} | {row['pairs_with_different_counts']} of "
            f"{row['loop_pairs_timed']} |")
    if results['memory']:
        s = results['sizes'][0]['size']
        lines += [
            '', f"Peak memory of grid_search at {s['M']} x {s['NK']} x "
            f"{s['N']} (RSS increase of a fresh process):", '',
            '| max_elements | peak (MiB) | temporaries, 20 B x '
            'min(max_elements, 2^20) (MiB) |',
            '|---|---|---|'
        ]
        for row in results['memory']:
            lines.append(
                f"| 2^{row['max_elements'].bit_length() - 1} | "
                f"{row['peak_rss_increase_bytes'] / 2**20:.1f} | "
                f"{row['bound_bytes'] / 2**20:.1f} |")
    return '\n'.join(lines)


def main(argv: Sequence[str] = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [parse_size(s) for s in args.sizes]
    start, cpu_start = time.perf_counter(), cpu_seconds()
    device = torch.device(args.device)
    machine = dict(cpu=cpu_model(), cores=os.cpu_count(),
                   torch_threads=torch.get_num_threads(),
                   torch=torch.__version__, device=str(device))
    if device.type == 'cuda':
        machine['gpu'] = torch.cuda.get_device_name(device)
    results = dict(machine=machine, args=vars(args),
                   sizes=[bench_size(size, args) for size in sizes],
                   memory=bench_memory(sizes[0], args))
    results['total_seconds'] = time.perf_counter() - start
    machine['other_processes_cpu_share'] = other_cpu_share(
        cpu_start, results['total_seconds'])
    print(markdown_table(results))
    print(f"\nTotal {results['total_seconds']:.0f} s; JSON: {args.out}")
    write_json(args.out, results)
    return results


if __name__ == '__main__':
    main()
