"""Cost of the hyperparameter search with a second cache, against
Tip-Adapter's own search, timed side by side in one run.

Three searches over the same random, clustered, L2-normalised features
(``grid_search``, vectorised and chunked):

* Tip-Adapter: ``(beta, alpha)``, ``nb x na`` points (``TipAdapterHead``);
* two caches, staged (``DualCacheTipAdapterHead``, the default): Tip-Adapter's
  grid with the second cache off, then ``(beta2, alpha2)`` with alpha2 also
  0: ``nb x na + nb2 x (na2 + 1)`` points;
* two caches, joint (``search_mode='joint'``): the 4-D product on a smaller
  grid (``--joint-steps``), extrapolated per point to the full grid.

Prints a Markdown table and writes JSON (``--out``).

    python benchmarks/bench_dual_cache_search.py [--device cuda] [...]
"""
import statistics
import time

import torch
import torch.nn.functional as F

from common import add_out_arg, cpu_model, new_parser, write_json
from tip_adapter_mm.engine import grid_search
from tip_adapter_mm.models.heads import DualCacheTipAdapterHead, TipAdapterHead


def parse_args():
    parser = new_parser(__doc__)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int, default=0,
                        help='torch threads on CPU (0: torch default)')
    parser.add_argument('--val', type=int, default=256,
                        help='search samples M')
    parser.add_argument('--keys', type=int, default=1024,
                        help='cache keys NK (shots x classes)')
    parser.add_argument('--classes', type=int, default=64, help='N')
    parser.add_argument('--dim', type=int, default=512, help='C (CLIP)')
    parser.add_argument('--dim2', type=int, default=2048,
                        help='C2 (the second encoder, e.g. ResNet-50)')
    parser.add_argument('--steps', type=int, nargs=2, default=(200, 20),
                        help='(beta, alpha) grid, also (beta2, alpha2)')
    parser.add_argument('--joint-steps', type=int, nargs=2, default=(20, 5),
                        help='(beta, alpha) steps of each pair in the '
                        'timed joint search')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--seed', type=int, default=0)
    add_out_arg(parser, 'bench_dual_cache_search.json')
    return parser.parse_args()


def problem(args, device):
    """Heads sharing one cache (``head.cache``; the two-cache heads also
    ``head.second_cache``, same values) and zero-shot weights, and search
    features ``f``, ``f2``: both encoders see noisy copies of class
    centres."""
    g = torch.Generator().manual_seed(args.seed)

    def around(centres, spread):
        dim = centres.shape[1]
        noise = torch.randn(centres.shape, generator=g)
        return F.normalize(centres + spread / dim**0.5 * noise, dim=-1)

    n = args.classes
    centres = F.normalize(torch.randn(n, args.dim, generator=g), dim=-1)
    centres2 = F.normalize(torch.randn(n, args.dim2, generator=g), dim=-1)
    key_labels = torch.arange(args.keys) % n
    labels = torch.randint(n, (args.val, ), generator=g)
    values = F.one_hot(key_labels, n).float()
    zero_shot = around(centres, 3.0).t()
    keys, keys2 = around(centres[key_labels], 3.0), around(
        centres2[key_labels], 3.0)
    feats, feats2 = around(centres[labels], 3.0), around(
        centres2[labels], 3.0)
    single = TipAdapterHead(n, search_step=args.steps)
    dual = DualCacheTipAdapterHead(
        n, search_step=args.steps, second_search_step=args.steps)
    joint = DualCacheTipAdapterHead(
        n, search_step=args.joint_steps,
        second_search_step=args.joint_steps, search_mode='joint')
    for head in (single, dual, joint):
        head.set_zero_shot_weights(zero_shot)
        head.cache.set(keys, values)
        head.to(device)
    for head in (dual, joint):
        # Both caches hold the same few-shot images: same values.
        head.second_cache.set(keys2, head.cache.values)
    return (single, dual, joint, feats.to(device), feats2.to(device),
            labels.to(device))


def points(head) -> int:
    total = 0
    for stage in head.search_stages():
        size = 1
        for values in stage.grid.values():
            size *= len(values)
        total += size
    return total


def main():
    args = parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    single, dual, joint, f, f2, labels = problem(args, device)
    # grid_search takes a tuple with one feature tensor per visual encoder.
    runs = {
        'Tip-Adapter': (single, (f, )),
        'two caches, staged': (dual, (f, f2)),
        'two caches, joint (small grid)': (joint, (f, f2)),
    }
    times = {name: [] for name in runs}
    results = {}

    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    for name, (head, feats) in runs.items():  # warm-up
        results[name] = grid_search(head, feats, labels)
    for _ in range(args.repeats):  # interleaved
        for name, (head, feats) in runs.items():
            sync()
            start = time.perf_counter()
            grid_search(head, feats, labels)
            sync()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times['Tip-Adapter'])
    rows = []
    for name, (head, _) in runs.items():
        seconds = statistics.median(times[name])
        rows.append(dict(search=name, points=points(head), seconds=seconds,
                         ratio=seconds / base,
                         seconds_per_point=seconds / points(head),
                         accuracy=results[name].accuracy,
                         best=results[name].best))
    nb, na = args.steps
    full_joint = nb * na * nb * (na + 1)
    per_point = rows[2]['seconds_per_point']
    machine = (f'{torch.cuda.get_device_name(device)}' if device.type ==
               'cuda' else f'{cpu_model()}, {torch.get_num_threads()} '
               'threads')
    print(f'Search cost, M={args.val}, NK={args.keys}, N={args.classes}, '
          f'C={args.dim}, C2={args.dim2}; {machine}\n')
    print('| Search | Grid points | Time (s) | vs Tip-Adapter | '
          'Best val top-1 (%) |')
    print('|---|---|---|---|---|')
    for row in rows:
        print(f"| {row['search']} | {row['points']} | {row['seconds']:.3f} "
              f"| {row['ratio']:.2f}x | {row['accuracy']:.2f} |")
    print(f'| two caches, joint (full grid, extrapolated) | {full_joint} | '
          f'{per_point * full_joint:.0f} | '
          f'{per_point * full_joint / base:.0f}x | - |')
    write_json(args.out, dict(args=vars(args), machine=machine, rows=rows,
                              full_joint_points=full_joint,
                              full_joint_seconds_estimate=per_point *
                              full_joint))
    print(f'\nWrote {args.out}')


if __name__ == '__main__':
    main()
