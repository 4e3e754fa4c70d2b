"""Benchmark Tip-Adapter's cache building, alpha/beta search and inference.

Everything is built in a temporary directory: an open_clip model with random
weights (size from the arguments) and generated JPEG images in class
folders. Each measurement compares two methods side by side in the same run,
alternating their repetitions (A, B, A, B, ...; at test time batch by
batch) after one warm-up each, and takes medians:

1. Cache building: the package's path (``AugmentedViewsDataset`` over a
   ``FewShotDataset`` with the train pipeline, an MMEngine dataloader,
   ``extract_features``) against the bare encoder (``model.encode_image`` on
   already-preprocessed batches of the same images). Target >= 0.95.
2. Alpha/beta search: ``grid_search`` (vectorised, chunked) against a plain
   per-pair double loop over the same grid. Target speed-up >= 50x.
3. Test time: the classifier's ``predict`` (cache term included) against
   zero-shot CLIP (the same forward without the cache term). Target
   overhead <= 3 %.

Usage (defaults: about 1.5 minutes on an idle 2-core CPU)::

    python benchmarks/bench_tip_adapter.py
    python benchmarks/bench_tip_adapter.py --device cuda --num-classes 1000 \
        --shots 16 --augment-epoch 10 --val-size 5000 --num-workers 8 \
        --vision-width 768 --vision-layers 12 --patch-size 16 \
        --embed-dim 512 --search-val 10000 --search-keys 16000 \
        --search-classes 1000 --search-dim 512
"""
import argparse
import gc
import glob
import os
import os.path as osp
import platform
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from typing import Callable, Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from common import (REPO, add_model_args, add_out_arg, cpu_model,
                    cpu_seconds, new_parser, other_cpu_share,
                    write_clip_model, write_json)
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from PIL import Image

from mmpretrain.registry import MODELS
from tip_adapter_mm.datasets.augmented_views import AugmentedViewsDataset
from tip_adapter_mm.datasets.few_shot import FewShotDataset
from tip_adapter_mm.engine import extract_features, grid_search
from tip_adapter_mm.models.heads import TipAdapterHead
from tip_adapter_mm.structures import EncodedFeatures

PIPELINES = osp.join(REPO, 'configs', '_base_', 'datasets', 'pipelines.py')
MODEL_NAME = 'TipAdapterBench-ViT'
TARGETS = dict(cache_ratio=0.95, search_speedup=50.0, test_overhead=0.03)
#: Norm of the noise added to unit class centres in the random search
#: features: about 32 % zero-shot top-1 at N=32, C=256; 60 % at 1000, 1024.
SPREAD = dict(text=2.0, image=4.0)


# -- arguments and machine ----------------------------------------------------
def parse_args(argv: Sequence[str] = None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    add = parser.add_argument
    add('--device', default='cpu', help="'cpu' or 'cuda'")
    add_out_arg(parser, 'bench_tip_adapter.json')
    add('--repeats', type=int, default=5,
        help='timed repetitions of each method (after one warm-up)')
    add('--seed', type=int, default=0, help='seed of weights and data')
    add('--threads', type=int, default=0,
        help="torch CPU threads of this process (0: torch's default)")
    add_model_args(parser, 'model (random open_clip ViT)', width=384,
                   layers=6, embed_dim=256,
                   patch_help='patch size (input is 224x224)',
                   embed_help='dimension C of the CLIP embedding')
    data = parser.add_argument_group('data (generated JPEGs)')
    data.add_argument('--num-classes', type=int, default=16,
                      help='N, classes of the few-shot set')
    data.add_argument('--shots', type=int, default=4,
                      help='K, few-shot images per class')
    data.add_argument('--augment-epoch', type=int, default=2,
                      help='augmented views per few-shot image')
    data.add_argument('--val-size', type=int, default=128,
                      help='images timed per test-time pass')
    data.add_argument('--image-size', type=int, nargs=2, default=(400, 300),
                      metavar=('W', 'H'), help='size of generated images')
    data.add_argument('--batch-size', type=int, default=64,
                      help='batch size of every loader and timed forward')
    data.add_argument('--num-workers', type=int, default=2,
                      help='dataloader worker processes')
    data.add_argument('--max-batches-in-memory', type=int, default=8,
                      help='preprocessed batches kept for the bare-encoder '
                      'and test-time passes (cycled to cover all images)')
    search = parser.add_argument_group(
        'alpha/beta search (random features; defaults: 16 shots of 128 '
        'classes, CLIP ViT-B\'s C=512)')
    search.add_argument('--search-val', type=int, default=64,
                        help='M, features searched on')
    search.add_argument('--search-keys', type=int, default=2048,
                        help='NK, cache keys')
    search.add_argument('--search-classes', type=int, default=128,
                        help='N, classes')
    search.add_argument('--search-dim', type=int, default=512,
                        help='C, feature dimension')
    search.add_argument('--search-steps', type=int, nargs=2,
                        default=(200, 20), metavar=('BETA', 'ALPHA'),
                        help='grid points')
    search.add_argument('--search-chunk-size', type=int, default=4096,
                        help='chunk_size of grid_search')
    search.add_argument('--search-max-elements', type=int, default=2**26,
                        help='max_elements of grid_search')
    return parser.parse_args(argv)


def machine_info(device: torch.device) -> dict:
    """CPU model, core count, library versions and accelerator."""
    info = dict(cpu=cpu_model(), cores=os.cpu_count(),
                torch_threads=torch.get_num_threads(),
                torch=torch.__version__, python=platform.python_version(),
                device=str(device))
    if device.type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
    return info


# -- model and data -----------------------------------------------------------
def write_jpeg(job: Tuple[str, int, Tuple[int, int]]) -> None:
    """A smooth random colour field with noise, saved as a JPEG."""
    path, seed, size = job
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize(size, Image.BICUBIC))
    noise = rng.integers(0, 48, base.shape, dtype=np.uint8)
    Image.fromarray(np.maximum(base, 48) - noise).save(path, quality=90)


def generate_images(root: str, args: argparse.Namespace) -> List[str]:
    """``train/`` with ``--shots`` images per class and ``val/`` with
    ``--val-size`` images over the classes; returns the class names."""
    classes = [f'class_{c:04d}' for c in range(args.num_classes)]
    jobs = []
    for split, count in (('train', args.shots * args.num_classes),
                         ('val', args.val_size)):
        for name in classes:
            os.makedirs(osp.join(root, split, name))
        for i in range(count):
            path = osp.join(root, split, classes[i % len(classes)],
                            f'{i:06d}.jpg')
            jobs.append((path, args.seed * 10**7 + len(jobs),
                         tuple(args.image_size)))
    with ProcessPoolExecutor(max(1, args.num_workers)) as pool:
        list(pool.map(write_jpeg, jobs, chunksize=64))
    return classes


def build_model(clip: dict, num_classes: int, device: torch.device):
    """The package's ``CLIPFewShotClassifier`` with a ``TipAdapterHead``."""
    model = MODELS.build(dict(
        type='CLIPFewShotClassifier',
        backbone=dict(type='OpenCLIPVisualBackbone', **clip),
        text_encoder=dict(type='OpenCLIPTextEncoder', **clip),
        head=dict(type='TipAdapterHead', num_classes=num_classes)))
    return model.to(device).eval()


def build_loader(dataset, args: argparse.Namespace):
    """An MMEngine dataloader as ``Runner.build_dataloader`` makes it from a
    config (``DefaultSampler``, ``pseudo_collate``)."""
    return Runner.build_dataloader(
        dict(dataset=dataset, batch_size=args.batch_size,
             num_workers=args.num_workers,
             persistent_workers=args.num_workers > 0,
             sampler=dict(type='DefaultSampler', shuffle=False)),
        seed=args.seed)


def preprocessed_batches(model, loader, limit: int) -> List[torch.Tensor]:
    """The first ``limit`` batches of ``loader`` through the model's data
    preprocessor, on the model's device."""
    batches = []
    with torch.no_grad():
        for data in loader:
            batches.append(model.data_preprocessor(data, False)['inputs'])
            if len(batches) == limit:
                break
    return batches


def cycled(batches: List[torch.Tensor],
           num_images: int) -> Iterator[torch.Tensor]:
    """Cycle over ``batches`` until ``num_images`` images were yielded."""
    done = 0
    while done < num_images:
        for inputs in batches:
            inputs = inputs[:num_images - done]
            done += len(inputs)
            yield inputs
            if done >= num_images:
                return


# -- timing -------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


@contextmanager
def quiet_stdout() -> Iterator[None]:
    """Send file descriptor 1 to /dev/null (MMEngine's progress bar)."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, 'w') as null:
        os.dup2(null.fileno(), 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of ``fn()``, device work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def alternate(methods: Dict[str, Callable[[], object]], repeats: int,
              device: torch.device) -> Dict[str, List[float]]:
    """One untimed warm-up of each method, then ``repeats`` rounds timing
    the methods in turn (A, B, A, B, ...); seconds per run."""
    for fn in methods.values():
        fn()
    times = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            times[name].append(seconds(fn, device))
    return times


def alternate_batches(methods: Dict[str, Callable[[torch.Tensor], object]],
                      batches: List[torch.Tensor], num_images: int,
                      repeats: int,
                      device: torch.device) -> Dict[str, List[float]]:
    """Like :func:`alternate` for per-batch methods, but alternating batch by
    batch (A B, B A, A B, ... on each batch), so that both methods see the
    same machine state; seconds per pass over ``num_images`` images."""
    names = list(methods)
    for name in names:
        for inputs in cycled(batches, num_images):
            methods[name](inputs)
    times = {name: [] for name in names}
    for _ in range(repeats):
        total = dict.fromkeys(names, 0.0)
        for i, inputs in enumerate(cycled(batches, num_images)):
            for name in (names if i % 2 == 0 else names[::-1]):
                total[name] += seconds(lambda: methods[name](inputs), device)
        for name in names:
            times[name].append(total[name])
    return times


def summary(times: Dict[str, List[float]], work: float) -> dict:
    """Median seconds, ``work / seconds`` per method, and the median of the
    per-round ratios ``first / second`` of the throughputs."""
    a, b = times.values()
    out = {name: dict(seconds=t, median_seconds=statistics.median(t),
                      median_throughput=work / statistics.median(t))
           for name, t in times.items()}
    out['ratio'] = statistics.median(tb / ta for ta, tb in zip(a, b))
    return out


# -- 1. cache building --------------------------------------------------------
def bench_cache(model, args: argparse.Namespace, root: str,
                device: torch.device) -> Tuple[dict, EncodedFeatures]:
    """Cache-building throughput against the bare encoder's.

    Returns the results and the features of the last cache pass (one
    ``(S, C)`` tensor per encoder, view-major: row ``v * S' + s`` is view
    ``v`` of few-shot image ``s``).
    """
    pipelines = Config.fromfile(PIPELINES)
    fewshot = FewShotDataset(
        dataset=dict(type='CustomDataset', data_root=root,
                     data_prefix='train', pipeline=pipelines.train_pipeline),
        num_shots=args.shots, seed=args.seed)
    views = AugmentedViewsDataset(fewshot, num_views=args.augment_epoch,
                                  seed=args.seed)
    loader = build_loader(views, args)
    batches = preprocessed_batches(model, loader, args.max_batches_in_memory)
    num_images = len(views)
    features = {}

    def cache_pass() -> None:
        with quiet_stdout():
            features['views'] = extract_features(model, loader)

    @torch.no_grad()
    def bare_pass() -> None:
        for inputs in cycled(batches, num_images):
            model.encode_image(inputs)

    loading, encoding = [], []

    def measured_cache_pass() -> None:
        """A cache pass, with the CPU seconds of the loader's worker
        processes (decoding, augmenting) and of this process."""
        workers, own = children_cpu_seconds(), time.process_time()
        cache_pass()
        loading.append(children_cpu_seconds() - workers)
        encoding.append(time.process_time() - own)

    times = alternate(
        dict(cache_path=measured_cache_pass, bare_encoder=bare_pass),
        args.repeats, device)
    result = summary(times, num_images)
    loading, encoding = loading[1:], encoding[1:]  # without the warm-up
    result['loading_cpu_share'] = (
        sum(loading) / max(sum(loading) + sum(encoding), 1e-9)
        if args.num_workers else None)
    result.update(images_per_pass=num_images, unit='images/s',
                  few_shot_images=len(fewshot),
                  target=TARGETS['cache_ratio'],
                  met=result['ratio'] >= TARGETS['cache_ratio'])
    return result, features['views']


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's live child processes
    (the loader's workers), from ``/proc`` (Linux; 0 elsewhere)."""
    tick = os.sysconf('SC_CLK_TCK') if hasattr(os, 'sysconf') else 100
    total = 0.0
    for children in glob.glob(f'/proc/{os.getpid()}/task/*/children'):
        try:
            with open(children) as f:
                pids = f.read().split()
        except OSError:
            continue
        for pid in pids:
            try:
                with open(f'/proc/{pid}/stat') as f:
                    fields = f.read().rsplit(')', 1)[1].split()
            except OSError:  # exited meanwhile
                continue
            # fields[11], fields[12]: utime, stime (after pid and comm)
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def fit_head_on_views(model, views: EncodedFeatures, num_views: int) -> None:
    """Fit the head on the encoded views, as ``FewShotRunner``'s builder
    does for ``BuildCacheHook``: ``head.fit`` on the ``(V, S, C)`` views
    (the cache: their mean, L2-normalised; one-hot labels)."""
    head = model.head
    labels = views.labels.view(num_views, -1)[0]
    device = head.cache.values.device
    head.fit(tuple(f.to(device) for f in views.views(num_views)),
             labels.to(device))


# -- 2. alpha/beta search -----------------------------------------------------
def search_problem(args: argparse.Namespace, device: torch.device):
    """A ``TipAdapterHead`` with zero-shot weights and a cache, and search
    features with labels: all L2-normalised, scattered around random unit
    class centres (:data:`SPREAD`) so that accuracy varies over the grid."""
    generator = torch.Generator().manual_seed(args.seed)
    num_classes, dim = args.search_classes, args.search_dim

    def around(centres: torch.Tensor, spread: float) -> torch.Tensor:
        noise = torch.randn(centres.shape, generator=generator)
        return F.normalize(centres + spread / dim**0.5 * noise,
                           dim=-1).to(device)

    centres = F.normalize(torch.randn(num_classes, dim, generator=generator),
                          dim=-1)
    key_labels = torch.arange(args.search_keys) % num_classes
    labels = torch.randint(num_classes, (args.search_val, ),
                           generator=generator)
    head = TipAdapterHead(num_classes, search_step=args.search_steps).to(
        device)
    head.set_zero_shot_weights(around(centres, SPREAD['text']).t())
    head.cache.set(around(centres[key_labels], SPREAD['image']),
                   F.one_hot(key_labels, num_classes).float().to(device))
    feats = around(centres[labels], SPREAD['image'])
    return head, feats, labels.to(device)


@torch.no_grad()
def loop_search(head: TipAdapterHead, feats: torch.Tensor,
                labels: torch.Tensor) -> dict:
    """The reference search: one full forward per ``(beta, alpha)``.

    Returns the best point (first maximum in grid order, as the reference
    keeps it with ``>``), its accuracy and the correct counts per point.
    """
    grid = head.search_grid()
    weights, keys = head.zero_shot_weights, head.cache.keys
    values, scale = head.cache.values, head.clip_logit_scale
    correct = torch.zeros(len(grid['beta']), len(grid['alpha']),
                          dtype=torch.int64)
    best, best_count = None, -1
    for i, beta in enumerate(grid['beta'].tolist()):
        for j, alpha in enumerate(grid['alpha'].tolist()):
            logits = scale * feats @ weights + alpha * torch.exp(
                -beta * (1 - feats @ keys.t())) @ values
            count = int((logits.argmax(dim=-1) == labels).sum())
            correct[i, j] = count
            if count > best_count:
                best, best_count = dict(beta=beta, alpha=alpha), count
    return dict(best=best, accuracy=best_count * 100.0 / max(len(feats), 1),
                correct=correct)


def run_search(method: str, head, feats, labels,
               args: argparse.Namespace):
    """``grid_search`` (method 'vectorised'; it takes a tuple with one
    feature tensor per encoder) or :func:`loop_search`."""
    if method == 'vectorised':
        return grid_search(head, (feats, ), labels, args.search_chunk_size,
                           args.search_max_elements)
    return loop_search(head, feats, labels)


def peak_rss() -> int:
    """This process's peak resident set size (bytes), ``VmHWM``.

    Not ``ru_maxrss``: in a process started by fork and exec (as
    multiprocessing's spawn does) that also counts the parent's RSS at the
    fork, which hides anything smaller.
    """
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) * 1024
    raise RuntimeError('No VmHWM in /proc/self/status.')


def search_peak_rss(method: str, args: argparse.Namespace) -> int:
    """Peak RSS increase (bytes) of one search, in this fresh process.

    The inputs are created and the method runs once on 8 samples (one-time
    library allocations); then the peak is reset to the current RSS
    (``/proc/self/clear_refs``, Linux) and read before and after the search.
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    head, feats, labels = search_problem(args, torch.device('cpu'))
    run_search(method, head, feats[:8], labels[:8], args)
    gc.collect()
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
    baseline = peak_rss()
    run_search(method, head, feats, labels, args)
    return peak_rss() - baseline


def search_peak_memory(method: str, head, feats, labels,
                       args: argparse.Namespace) -> int:
    """Peak memory increase (bytes) of one search: CUDA allocator peak, or
    the RSS peak of a fresh spawned process on CPU."""
    if feats.device.type == 'cuda':
        torch.cuda.synchronize(feats.device)
        torch.cuda.reset_peak_memory_stats(feats.device)
        baseline = torch.cuda.memory_allocated(feats.device)
        run_search(method, head, feats, labels, args)
        return torch.cuda.max_memory_allocated(feats.device) - baseline
    with ProcessPoolExecutor(1, mp_context=get_context('spawn')) as pool:
        return pool.submit(search_peak_rss, method, args).result()


def bench_search(args: argparse.Namespace, device: torch.device) -> dict:
    """Vectorised ``grid_search`` against the per-pair loop."""
    head, feats, labels = search_problem(args, device)
    results = {}

    def method(name: str) -> Callable[[], None]:

        def run() -> None:
            results[name] = run_search(name, head, feats, labels, args)

        return run

    times = alternate(dict(vectorised=method('vectorised'),
                           loop=method('loop')), args.repeats, device)
    result = summary(times, 1.0)
    vectorised, loop = results['vectorised'], results['loop']
    result['speedup'] = result.pop('ratio')
    result['unit'] = 'searches/s'
    for name in times:
        result[name]['peak_memory_bytes'] = search_peak_memory(
            name, head, feats, labels, args)
    result.update(
        sizes=dict(M=args.search_val, NK=args.search_keys,
                   N=args.search_classes, C=args.search_dim,
                   grid=list(args.search_steps)),
        memory_kind=('cuda max_memory_allocated' if device.type == 'cuda'
                     else 'peak RSS increase, fresh process'),
        best=dict(vectorised=dict(vectorised.best,
                                  accuracy=vectorised.accuracy),
                  loop=dict(loop['best'], accuracy=loop['accuracy'])),
        same_best=(vectorised.best == loop['best']
                   and vectorised.accuracy == loop['accuracy']),
        differing_grid_points=int(
            (vectorised.accuracy_grid * len(feats) / 100).round().long()
            .ne(loop['correct']).sum()),
        target=TARGETS['search_speedup'])
    result['met'] = result['speedup'] >= TARGETS['search_speedup']
    return result


# -- 3. test time -------------------------------------------------------------
def zero_shot_predict(model, inputs: torch.Tensor):
    """Zero-shot CLIP: ``model.predict`` without the cache term (backbone,
    normalisation, ``clip_logits``, the head's usual post-processing)."""
    head = model.head
    # extract_feat gives one tensor per encoder; pre_logits checks the tuple
    # and returns the tensor of the single encoder.
    feats = head.pre_logits(model.extract_feat(inputs))
    return head._get_predictions(head.clip_logits(feats), None)


def bench_test_time(model, args: argparse.Namespace, root: str,
                    device: torch.device) -> dict:
    """Tip-Adapter ``predict`` against zero-shot CLIP on the same batches."""
    pipelines = Config.fromfile(PIPELINES)
    loader = build_loader(
        dict(type='CustomDataset', data_root=root, data_prefix='val',
             pipeline=pipelines.test_pipeline), args)
    batches = preprocessed_batches(model, loader, args.max_batches_in_memory)
    del loader  # stops its persistent workers before the timing
    with torch.no_grad():
        times = alternate_batches(
            dict(tip_adapter=model.predict,
                 zero_shot=lambda x: zero_shot_predict(model, x)),
            batches, args.val_size, args.repeats, device)
    result = summary(times, args.val_size)
    result['overhead'] = 1 - result.pop('ratio')
    result.update(images_per_pass=args.val_size, unit='images/s',
                  cache_keys=int(model.head.cache.keys.shape[0]),
                  target=TARGETS['test_overhead'],
                  met=result['overhead'] <= TARGETS['test_overhead'])
    return result


# -- report -------------------------------------------------------------------
def markdown_table(results: dict) -> str:
    """The three comparisons, absolute numbers and ratios, as Markdown."""
    m, cache = results['machine'], results['cache_building']
    search, test = results['search'], results['test_time']
    mib = 2.0**20
    sizes = ', '.join(f'{k}={v}' for k, v in search['sizes'].items()
                      if k != 'grid')
    sizes += ', grid {}x{}'.format(*search['sizes']['grid'])

    def loading_share(r: dict) -> str:
        share = r.get('loading_cpu_share')
        return 'n/a (no workers)' if share is None else f'{100 * share:.0f} %'

    def met(r: dict) -> str:
        return 'yes' if r['met'] else '**no**'

    def point(method: str) -> str:
        return ', '.join(f'{k} {v:.4f}'
                         for k, v in search['best'][method].items())

    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores "
        f"({m['torch_threads']} torch threads), torch {m['torch']}, "
        f"device {m['device']}" + (f" ({m['gpu']})" if 'gpu' in m else '')
        + f"; other processes used "
        f"{100 * m['other_processes_cpu_share']:.0f} % of the CPU time "
        "during the run",
        '',
        '| Measurement | A | B | A vs B | Target | Met |',
        '|---|---|---|---|---|---|',
        f"| Cache building, {cache['images_per_pass']} views "
        f"(images/s) | cache path "
        f"{cache['cache_path']['median_throughput']:.1f} | bare encoder "
        f"{cache['bare_encoder']['median_throughput']:.1f} | ratio "
        f"{cache['ratio']:.3f} | >= {cache['target']} | {met(cache)} |",
        f"| Cache path's CPU time in the loader's workers (decoding, "
        f"augmenting) | {loading_share(cache)} | | | | |",
        f"| Alpha/beta search, {sizes} (s) | grid_search "
        f"{search['vectorised']['median_seconds']:.3f} | double loop "
        f"{search['loop']['median_seconds']:.3f} | speed-up "
        f"{search['speedup']:.1f}x | >= {search['target']:.0f}x | "
        f"{met(search)} |",
        f"| Search peak memory, {search['memory_kind']} (MiB) | grid_search "
        f"{search['vectorised']['peak_memory_bytes'] / mib:.1f} | double "
        f"loop {search['loop']['peak_memory_bytes'] / mib:.1f} | | | |",
        f"| Test time, {test['images_per_pass']} images, "
        f"{test['cache_keys']} keys (images/s) | Tip-Adapter predict "
        f"{test['tip_adapter']['median_throughput']:.1f} | zero-shot "
        f"{test['zero_shot']['median_throughput']:.1f} | overhead "
        f"{100 * test['overhead']:.2f} % | <= {100 * test['target']:.0f} % "
        f"| {met(test)} |",
        '',
        f"Search check: same best (beta, alpha, accuracy): "
        f"{search['same_best']} (grid_search {point('vectorised')}, loop "
        f"{point('loop')}); grid points with different counts: "
        f"{search['differing_grid_points']}.",
    ]
    return '\n'.join(lines)


def main(argv: Sequence[str] = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    init_default_scope('mmpretrain')
    root = tempfile.mkdtemp(prefix='bench_tip_adapter_')
    try:
        start, cpu_start = time.perf_counter(), cpu_seconds()
        machine = machine_info(device)
        clip = write_clip_model(root, args, model_name=MODEL_NAME,
                                seed=args.seed, text_width=64, text_heads=1)
        classes = generate_images(root, args)
        model = build_model(clip, args.num_classes, device)
        model.build_zero_shot_weights(classes)
        cache, views = bench_cache(model, args, root, device)
        fit_head_on_views(model, views, args.augment_epoch)
        results = dict(machine=machine, args=vars(args),
                       cache_building=cache,
                       search=bench_search(args, device),
                       test_time=bench_test_time(model, args, root, device))
        results['total_seconds'] = time.perf_counter() - start
        machine['other_processes_cpu_share'] = other_cpu_share(
            cpu_start, results['total_seconds'])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(markdown_table(results))
    print(f"\nTotal {results['total_seconds']:.0f} s; JSON: {args.out}")
    write_json(args.out, results)
    return results


if __name__ == '__main__':
    main()
