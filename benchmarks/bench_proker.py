"""ProKeR at scale: its Nystrom approximation against the exact solve, and
its fit time and peak memory at ImageNet-like sizes.

Random clustered features stand in for CLIP's: class centres around a shared
direction, few-shot images around their centre, augmented views around
their image, a zero-shot classifier near the centres, test images drawn like
the shots (one view each). All L2-normalised, ``--dim`` channels.

1. Approximation (sizes where the exact ``M x M`` solve fits): at several
   ``(beta, lmbda)`` the exact head (``ProKeRHead`` with every view as a
   centre) and the Nystrom head (``exact_max_samples=0``; landmarks the
   view-averaged shots, ``m = S``, and with ``--extra-landmarks`` views
   added) predict the same test set: accuracy of each, share of equal
   predictions, largest logit difference against the largest kernel term
   ``|k(f, Z) A|``. Then both search a small grid on a validation set; the
   test accuracy at each one's best point.
2. Scale: ``fit`` of the Nystrom head (the one that runs above
   ``exact_max_samples``) at ``--scale-classes`` classes, each in a fresh
   process: wall time and peak memory (CPU: peak RSS above the RSS before
   the fit, ``VmHWM`` reset through ``/proc/self/clear_refs``; CUDA:
   ``torch.cuda.max_memory_allocated`` above the memory before the fit).
   When ``--target-classes`` is not among them, the table extrapolates to
   it with the cost model ``time = a S^3 + b S^2`` and ``memory = c S^2 +
   d S + e`` (``S`` = shots x classes; ``e`` the kernel chunks) fitted on
   the measured sizes, and says so. The exact solve's own need at the
   target size is computed (``M^2`` float64 for ``k(Z, Z)`` and as much for
   its factor).

Prints Markdown tables and writes JSON (``--out``).

    python benchmarks/bench_proker.py [--device cuda] [--scale-classes ...]
"""
import multiprocessing as mp
import time

import numpy as np

from common import (add_out_arg, cpu_model, cpu_seconds, new_parser,
                    other_cpu_share, write_json)

GB = 1024**3


def parse_args():
    parser = new_parser(__doc__)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int, default=0,
                        help='torch threads on CPU (0: torch default)')
    parser.add_argument('--dim', type=int, default=1024, help='channels D')
    parser.add_argument('--shots', type=int, default=16)
    parser.add_argument('--views', type=int, default=10,
                        help='augmented views per shot V')
    parser.add_argument('--compare-classes', type=int, nargs='*',
                        default=(10, 25),
                        help='class counts of the exact-vs-Nystrom '
                        'comparison (M = views x shots x classes)')
    parser.add_argument('--points', nargs='+',
                        default=('1.7,0.1', '0.5,0.001', '3,1', '6,0.5',
                                 '10,10'),
                        help='(beta,lmbda) points of the comparison')
    parser.add_argument('--extra-landmarks', type=int, default=1,
                        help='also compare m = (1 + this) x S landmarks '
                        '(the shots and seeded views); 0: only m = S')
    parser.add_argument('--search-grid', type=float, nargs=6,
                        default=(0.5, 6.0, 6, 0.001, 1.0, 6),
                        metavar=('B0', 'B1', 'NB', 'L0', 'L1', 'NL'),
                        help='beta and lmbda linspaces of the search')
    parser.add_argument('--test-per-class', type=int, default=40)
    parser.add_argument('--val-per-class', type=int, default=10)
    parser.add_argument('--scale-classes', type=int, nargs='*',
                        default=(125, 250, 500),
                        help='class counts whose fit is timed')
    parser.add_argument('--target-classes', type=int, default=1000,
                        help='the ImageNet-like size reported (measured '
                        'when in --scale-classes, else extrapolated)')
    parser.add_argument('--seed', type=int, default=0)
    add_out_arg(parser, 'bench_proker.json')
    return parser.parse_args()


def clustered(classes, shots, views, dim, num_test, num_val, seed,
              rank=64):
    """Raw views ``(V, S, D)``, their image labels ``(S, )``, normalised
    test / val features with labels, zero-shot weights ``(D, N)``. Classes,
    images and views differ within a random ``rank``-dimensional subspace
    (isotropic noise in 1024 dimensions would make every class trivially
    separable), around a shared direction."""
    import torch
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(dim, rank, generator=g))

    def unit(count):
        return F.normalize(torch.randn(count, rank, generator=g),
                           dim=-1) @ basis.t()

    shared = F.normalize(torch.randn(dim, generator=g), dim=0)
    centres = shared + 0.6 * unit(classes)

    def images(labels):
        return centres[labels] + 1.2 * unit(len(labels))

    labels = torch.arange(classes).repeat_interleave(shots)
    shot_images = images(labels)
    support = torch.stack(
        [shot_images + 0.3 * unit(len(labels)) for _ in range(views)])
    test_labels = torch.arange(classes).repeat(num_test)
    val_labels = torch.arange(classes).repeat(num_val)
    text = F.normalize(centres + 0.8 * unit(classes), dim=-1).t()
    return dict(support=support, labels=labels,
                test=F.normalize(images(test_labels), dim=-1),
                test_labels=test_labels,
                val=F.normalize(images(val_labels), dim=-1),
                val_labels=val_labels, text=text.contiguous())


def make_head(data, device, **kwargs):
    from tip_adapter_mm.models.heads import ProKeRHead
    head = ProKeRHead(num_classes=data['text'].shape[1], **kwargs).to(device)
    head.set_zero_shot_weights(data['text'].to(device))
    return head


def sync(device):
    import torch
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def compare(args, classes, device):
    """Exact vs Nystrom on one problem: rows per (beta, lmbda) and the
    search comparison."""
    from tip_adapter_mm.engine import grid_search
    data = clustered(classes, args.shots, args.views, args.dim,
                     args.test_per_class, args.val_per_class, args.seed)
    support = (data['support'].to(device), )
    labels = data['labels'].to(device)
    test = data['test'].to(device)
    test_labels = data['test_labels'].to(device)
    b0, b1, nb, l0, l1, nl = args.search_grid
    grid = dict(beta_range=(b0, b1, int(nb)), lmbda_range=(l0, l1, int(nl)))
    num_shots = classes * args.shots
    heads = {'exact': make_head(data, device, exact_max_samples=10**9,
                                **grid)}
    heads[f'Nystrom m={num_shots}'] = make_head(
        data, device, exact_max_samples=0, **grid)
    if args.extra_landmarks:
        m = num_shots * (1 + args.extra_landmarks)
        heads[f'Nystrom m={m}'] = make_head(data, device,
                                            exact_max_samples=0,
                                            num_landmarks=m, **grid)
    for head in heads.values():
        head.fit(support, labels)
    base = test.double() @ data['text'].to(device).double()
    rows = []
    for point in args.points:
        beta, lmbda = (float(v) for v in point.split(','))
        logits, seconds = {}, {}
        for name, head in heads.items():
            sync(device)
            start = time.perf_counter()
            head.set_hyperparameters(beta=beta, lmbda=lmbda)
            sync(device)
            seconds[name] = time.perf_counter() - start
            logits[name] = head((test, )).double()
        exact = logits['exact']
        kernel_term = float((exact - base).abs().max())
        for name, value in logits.items():
            rows.append(dict(
                classes=classes, M=heads['exact'].num_samples,
                method=name, beta=beta, lmbda=lmbda,
                accuracy=float((value.argmax(1) == test_labels).double()
                               .mean() * 100),
                agreement=float((value.argmax(1) == exact.argmax(1))
                                .double().mean() * 100),
                max_logit_diff=float((value - exact).abs().max()),
                max_kernel_term=kernel_term, solve_seconds=seconds[name]))
    zero_shot = float((base.argmax(1) == test_labels).double().mean() * 100)
    val = (data['val'].to(device), )
    val_labels = data['val_labels'].to(device)
    searches = []
    for name, head in heads.items():
        sync(device)
        start = time.perf_counter()
        result = grid_search(head, val, val_labels)
        sync(device)
        seconds = time.perf_counter() - start
        head.apply_search(result.best)
        accuracy = float((head((test, )).argmax(1) == test_labels).double()
                         .mean() * 100)
        searches.append(dict(classes=classes, method=name, best=result.best,
                             val_accuracy=result.accuracy,
                             test_accuracy=accuracy, seconds=seconds,
                             points=result.num_points))
    return rows, searches, zero_shot


def fit_in_process(args, classes, queue):
    """Fit the Nystrom head at ``classes`` classes; report time and peak
    memory of the fit alone."""
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = clustered(classes, args.shots, args.views, args.dim, 1, 1,
                     args.seed)
    head = make_head(data, device)  # default exact_max_samples
    support = (data['support'].to(device), )
    labels = data['labels'].to(device)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # reset VmHWM to the current RSS
        before = _status_kb('VmRSS') * 1024
    cpu_start = cpu_seconds()
    start = time.perf_counter()
    head.fit(support, labels)
    sync(device)
    seconds = time.perf_counter() - start
    others = other_cpu_share(cpu_start, seconds)
    if device.type == 'cuda':
        peak = torch.cuda.max_memory_allocated(device) - before
    else:
        peak = _status_kb('VmHWM') * 1024 - before
    queue.put(dict(classes=classes, S=classes * args.shots,
                   M=head.num_samples, m=len(head.centres),
                   exact=head.uses_exact_solve, fit_seconds=seconds,
                   peak_bytes=int(peak), other_cpu_share=others,
                   support_bytes=int(head.support_views.numel() * 4)))


def _status_kb(key):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1])
    raise KeyError(key)


def measure_fit(args, classes):
    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    proc = ctx.Process(target=fit_in_process, args=(args, classes, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def extrapolate(rows, target_s):
    """Non-negative least-squares fits (relative residuals) of ``time = a
    S^3 + b S^2`` and ``memory = c S^2 + d S + e`` (``e``: the chunks,
    bounded by ``max_elements``) on the measured rows, evaluated at
    ``target_s``."""
    from scipy.optimize import nnls
    s = np.array([r['S'] for r in rows], dtype=float)
    t = np.array([r['fit_seconds'] for r in rows])
    mem = np.array([r['peak_bytes'] for r in rows], dtype=float)
    (a, b), _ = nnls(np.stack([s**3, s**2], 1) / t[:, None], np.ones_like(t))
    (c, d, e), _ = nnls(
        np.stack([s**2, s, np.ones_like(s)], 1) / mem[:, None],
        np.ones_like(mem))
    return (float(a * target_s**3 + b * target_s**2),
            float(c * target_s**2 + d * target_s + e))


def main():
    args = parse_args()
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    machine = (torch.cuda.get_device_name(device) if device.type == 'cuda'
               else f'{cpu_model()}, {torch.get_num_threads()} threads')
    print(f'ProKeR, D={args.dim}, {args.shots} shots x {args.views} views; '
          f'{machine}, torch {torch.__version__}\n')

    rows, searches, zero_shot = [], [], {}
    for classes in args.compare_classes:
        r, s, z = compare(args, classes, device)
        rows += r
        searches += s
        zero_shot[classes] = z
    if rows:
        print('Exact solve vs Nystrom approximation (test accuracy %, '
              'share of equal predictions %, largest logit difference vs '
              'the largest kernel term |k(f, Z) A| of the exact solve):\n')
        print('| N | M | beta | lmbda | method | top-1 | agree | '
              'max abs dlogit | max kernel term | solve (s) |')
        print('|---|---|---|---|---|---|---|---|---|---|')
        for r in rows:
            print(f"| {r['classes']} | {r['M']} | {r['beta']:g} | "
                  f"{r['lmbda']:g} | {r['method']} | {r['accuracy']:.2f} | "
                  f"{r['agreement']:.2f} | {r['max_logit_diff']:.2e} | "
                  f"{r['max_kernel_term']:.3f} | {r['solve_seconds']:.2f} |")
        print('\nSearch on validation (grid beta=linspace(%g, %g, %d), '
              'lmbda=linspace(%g, %g, %d)); test top-1 at the best point '
              '(zero-shot: %s):\n' % (*args.search_grid[:2],
                                      int(args.search_grid[2]),
                                      *args.search_grid[3:5],
                                      int(args.search_grid[5]), ', '.join(
                                          f'N={k}: {v:.2f}'
                                          for k, v in zero_shot.items())))
        print('| N | method | best beta | best lmbda | val top-1 | test top-1 '
              '| search (s) |')
        print('|---|---|---|---|---|---|---|')
        for s in searches:
            print(f"| {s['classes']} | {s['method']} | "
                  f"{s['best']['beta']:.3g} | {s['best']['lmbda']:.3g} | "
                  f"{s['val_accuracy']:.2f} | {s['test_accuracy']:.2f} | "
                  f"{s['seconds']:.1f} |")

    scale = [measure_fit(args, c) for c in args.scale_classes]
    target_s = args.target_classes * args.shots
    target_m = target_s * args.views
    measured = [r for r in scale if r['classes'] == args.target_classes]
    if measured:
        target = dict(measured[0], extrapolated=False)
    elif len(scale) < 3:
        target = None  # too few sizes for the three-term memory model
    else:
        seconds, peak = extrapolate(scale, target_s)
        target = dict(classes=args.target_classes, S=target_s, M=target_m,
                      m=target_s, exact=False, fit_seconds=seconds,
                      peak_bytes=int(peak),
                      support_bytes=target_m * args.dim * 4,
                      extrapolated=True)
    exact_bytes = 2 * target_m**2 * 8
    print(f'\nFit (solve at one (beta, lmbda)) of the head as configured '
          f'(Nystrom above exact_max_samples), on {args.device}:\n')
    print('| classes | S | M | landmarks m | fit (s) | peak memory (GB) | '
          'support views kept (GB) | CPU share of other processes |')
    print('|---|---|---|---|---|---|---|---|')
    for r in scale + ([] if measured or target is None else [target]):
        mark = ' (extrapolated)' if r.get('extrapolated') else ''
        share = r.get('other_cpu_share')
        centres = 'exact solve' if r['exact'] else r['m']
        print(f"| {r['classes']}{mark} | {r['S']} | {r['M']} | {centres} | "
              f"{r['fit_seconds']:.1f} | {r['peak_bytes'] / GB:.2f} | "
              f"{r['support_bytes'] / GB:.2f} | "
              f"{'-' if share is None else f'{share:.0%}'} |")
    print(f'\nThe exact solve at M={target_m} would need '
          f'{exact_bytes / GB:.0f} GB (k(Z, Z) and its factor in float64).')
    write_json(args.out, dict(args=vars(args), machine=machine,
                              torch=torch.__version__, comparison=rows,
                              searches=searches, zero_shot=zero_shot,
                              scale=scale, target=target,
                              exact_bytes_at_target=exact_bytes))
    print(f'\nWrote {args.out}')


if __name__ == '__main__':
    main()
