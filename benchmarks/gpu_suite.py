"""The GPU suite: encoders, search, Tip-Adapter-F and test time at ImageNet
size, on one device, in one command, without downloading anything.

Random weights (open_clip architectures built with ``pretrained=None``),
generated JPEGs and random clustered features stand in for CLIP and
ImageNet; only the speed and memory of the computations are measured, plus
what half precision changes in their results. Rows:

1. Encoders (open_clip RN50 and ViT-B/16): the bare encoder
   (``model.encode_image`` on preprocessed batches held in memory) against
   the cache path (``extract_features`` over an MMEngine dataloader of
   ``AugmentedViewsDataset`` on the generated JPEGs, as
   ``bench_tip_adapter.py`` does), each in fp32 and in half precision (fp16
   on CUDA, bf16 on CPU): images/s, the ratio cache path / bare, and the
   largest difference between the fp32 and the half features (L2-normalised).
2. The alpha/beta search at ImageNet size (10,000 val x 16,000 keys x 1,000
   classes, D = 1024, Tip-Adapter's 200 x 20 grid) on random clustered
   features: ``grid_search`` with a ``TipAdapterHead`` against the
   reference per-pair loop (affinities once; then, per ``(beta, alpha)``:
   exp of the affinities, dense matmul with the one-hot values, plus the
   zero-shot logits, top-1). The loop runs on a spread subset of the grid's
   pairs and its time is extrapolated to the whole grid (said so in the
   row); the correct counts of both are compared on that subset.
3. Tip-Adapter-F: 20 epochs on stored views of 1,000 classes x 16 shots
   (random clustered features), cache keys trained with the head's loss,
   AdamW (lr 1e-3, eps 1e-4, weight decay 0.01), batch 256, cosine per
   iteration, one view per image per epoch: fp32 against AMP (fp16 with a
   gradient scaler on CUDA, bf16 on CPU), epoch by epoch alternately, with
   the top-1 of both on held-out features.
4. Test time: the classifier's ``predict`` with the cache term (16,000
   keys, 1,000 classes) against zero-shot CLIP on the same batches, with
   RN50 (``bench_tip_adapter.bench_test_time``).

Every comparison alternates its methods (A, B, A, B, ...) after one warm-up
each and takes medians. Peak memory of each method: on CUDA
``torch.cuda.max_memory_allocated`` after a reset (the whole allocation:
model, inputs and work), on CPU the peak resident set above the start
(``/proc/self/clear_refs``; ``n/a`` elsewhere). Each row has a time cap:
repetitions stop once it is spent (at least one timed round), Tip-Adapter-F
extrapolates the epochs left (said so). Elapsed time is printed per row.

``--reduced`` scales every size down (tiny encoders of the same families,
fewer classes, keys and images, the tiny ViT at test time; the same grid
and epochs) so that the suite runs on 2 CPU cores in well under a minute
(one torch thread: on a shared machine, more threads can wait far longer
for busy cores than they compute): the test suite runs it. The full
suite is sized for at most 5 minutes on one GPU; it also runs on CPU, but
takes long there.

Usage::

    python benchmarks/gpu_suite.py --device cuda
    python benchmarks/gpu_suite.py --device cpu --reduced
"""
import argparse
import copy
import math
import os
import os.path as osp
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from bench_heads import Meter, encoder_problem, search_defaults
from bench_tip_adapter import (PIPELINES, bench_test_time, cycled,
                               generate_images, machine_info,
                               preprocessed_batches, quiet_stdout,
                               search_problem)
from common import (add_out_arg, cpu_seconds, new_parser, other_cpu_share,
                    write_json)

#: Wall time allowed to the full suite on one GPU.
BUDGET_SECONDS = 300.0
#: The rows, in the order they run (``--rows``).
ROWS = ('encoders', 'search', 'tip_f', 'test_time')
#: Sizes of the full suite (one GPU, at most 5 minutes) and of --reduced
#: (2 CPU cores, under a minute). ``caps`` are seconds per row.
SIZES = dict(
    full=dict(
        encoders=(('RN50', 'RN50'), ('ViT-B/16', 'ViT-B-16')),
        enc_classes=64, enc_shots=16, enc_views=2, val_images=1024,
        image_size=(400, 300), batch_size=256, num_workers=8, repeats=3,
        search=dict(val=10000, keys=16000, classes=1000, dim=1024,
                    steps=(200, 20), loop_pairs=20),
        tip_f=dict(classes=1000, shots=16, views=10, dim=1024, val=10000,
                   epochs=20, batch=256),
        test_time=dict(encoder='RN50', keys=16000, classes=1000),
        caps=dict(encoder=90.0, search=60.0, tip_f=60.0, test_time=30.0)),
    reduced=dict(
        encoders=(('RN50', 'tiny RN'), ('ViT-B/16', 'tiny ViT')),
        enc_classes=8, enc_shots=4, enc_views=2, val_images=32,
        image_size=(128, 96), batch_size=32, num_workers=0, repeats=2,
        search=dict(val=500, keys=2048, classes=128, dim=256,
                    steps=(200, 20), loop_pairs=12),
        tip_f=dict(classes=128, shots=4, views=4, dim=256, val=500,
                   epochs=20, batch=64),
        test_time=dict(encoder='ViT-B/16', keys=2048, classes=128),
        caps=dict(encoder=15.0, search=10.0, tip_f=10.0, test_time=5.0)))
#: open_clip architectures of --reduced: RN50's and ViT-B/16's families at
#: a fraction of the width and depth (224 px inputs, as the pipelines give).
TINY_ARCHS = {
    'tiny RN': dict(
        embed_dim=64,
        vision_cfg=dict(image_size=224, layers=[1, 1, 1, 1], width=8,
                        head_width=16),
        text_cfg=dict(context_length=77, vocab_size=49408, width=32,
                      heads=2, layers=1)),
    'tiny ViT': dict(
        embed_dim=64,
        vision_cfg=dict(image_size=224, layers=2, width=64, head_width=32,
                        patch_size=16),
        text_cfg=dict(context_length=77, vocab_size=49408, width=32,
                      heads=2, layers=1)),
}
#: Tip-Adapter's ImageNet alpha (configs/_base_/datasets/imagenet_fewshot.py)
#: and beta, the values the Tip-Adapter-F loss uses.
TIP_F_HYPERPARAMETERS = dict(alpha=1.17, beta=1.0)


# -- arguments and device -----------------------------------------------------
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    add = parser.add_argument
    add('--device', default='cuda',
        help="'cuda' (or 'cuda:<index>') or 'cpu'")
    add('--reduced', action='store_true',
        help='every size scaled down, for CPU (the test suite runs it)')
    add_out_arg(parser, 'gpu_suite.json')
    add('--rows', nargs='+', default=list(ROWS),
        choices=list(ROWS), help='rows to run')
    add('--seed', type=int, default=0, help='seed of weights and data')
    add('--repeats', type=int, default=None,
        help='timed rounds per comparison (default: 3, --reduced 2)')
    add('--num-workers', type=int, default=None,
        help='dataloader workers (default: min(8, cores), --reduced 0)')
    add('--threads', type=int, default=0,
        help="torch CPU threads (0: torch's default)")
    return parser.parse_args(argv)


def resolve_device(name: str) -> torch.device:
    """``name`` as a device; a clear error when CUDA is asked for and this
    torch or machine has none."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SystemExit(f"gpu_suite: --device must be 'cuda' or 'cpu', got "
                         f'{name!r}.') from None
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise SystemExit(
                f'gpu_suite: --device {name} but CUDA is not available '
                f'(torch {torch.__version__}, built for CUDA '
                f'{torch.version.cuda}); run on a GPU machine or use '
                '--device cpu --reduced.')
        if device.index is not None and (device.index
                                         >= torch.cuda.device_count()):
            raise SystemExit(
                f'gpu_suite: --device {name} but only '
                f'{torch.cuda.device_count()} CUDA device(s) are visible.')
        if device.index is None:
            device = torch.device('cuda', torch.cuda.current_device())
    elif device.type != 'cpu':
        raise SystemExit(f"gpu_suite: --device must be 'cuda' or 'cpu', got "
                         f'{name!r}.')
    return device


def half_precision(device: torch.device) -> str:
    """The half precision of ``device``: 'fp16' on CUDA, 'bf16' on CPU."""
    return 'fp16' if device.type == 'cuda' else 'bf16'


def autocast(device: torch.device, precision: str):
    """``torch.autocast`` to ``precision`` ('fp32': disabled): what
    ``extract_features`` encodes in, and AMP for training."""
    from tip_adapter_mm.engine import precision_dtype
    dtype = precision_dtype(precision)
    return torch.autocast(device.type, dtype=dtype,
                          enabled=dtype != torch.float32)


# -- measuring ----------------------------------------------------------------
class Measured:
    """Seconds and peak memory of every call of one method."""

    def __init__(self) -> None:
        self.seconds: List[float] = []
        self.peaks: List[int] = []

    def summary(self, work: float, unit: str) -> dict:
        """Median seconds, ``work / median`` in ``unit`` and the largest
        peak (bytes; None where not measured)."""
        median = statistics.median(self.seconds)
        return dict(seconds=self.seconds, median_seconds=median,
                    throughput=work / median, unit=unit,
                    peak_memory_bytes=max(self.peaks) if self.peaks else None)


class Timer:
    """Times calls with :class:`bench_heads.Meter` (CPU: peak RSS above the
    start; CUDA: ``max_memory_allocated`` after a reset, the whole
    allocation)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.rss = osp.exists('/proc/self/clear_refs')
        self.meter = Meter(device)

    @property
    def memory_kind(self) -> str:
        if self.device.type == 'cuda':
            return 'torch.cuda.max_memory_allocated after a reset'
        return 'peak RSS above the start' if self.rss else 'n/a'

    def __call__(self, fn: Callable[[], object],
                 into: Optional[Measured] = None) -> Tuple[object, float]:
        """``(fn(), seconds)``; appends seconds and peak to ``into``."""
        if self.device.type == 'cpu' and not self.rss:
            self.meter.sync()
            start = time.perf_counter()
            out, peak = fn(), None
            seconds = time.perf_counter() - start
        else:
            out, seconds, peak = self.meter(fn)
            if self.device.type == 'cuda':
                peak = torch.cuda.max_memory_allocated(self.device)
        if into is not None:
            into.seconds.append(seconds)
            if peak is not None:
                into.peaks.append(int(peak))
        return out, seconds


def alternate(methods: Dict[str, Callable[[], object]], repeats: int,
              timer: Timer, cap: float) -> Dict[str, Measured]:
    """One untimed warm-up per method, then rounds timing the methods in
    turn (A, B, ...; reversed every other round) until ``repeats`` rounds
    are done or ``cap`` seconds are spent (at least one round)."""
    for fn in methods.values():
        fn()
    out = {name: Measured() for name in methods}
    start = time.perf_counter()
    names = list(methods)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            timer(methods[name], out[name])
        if time.perf_counter() - start > cap:
            break
    return out


# -- 1. encoders --------------------------------------------------------------
def backbone_cfg(arch: str, root: str) -> dict:
    """``OpenCLIPVisualBackbone`` kwargs with random weights: an open_clip
    architecture by name, or a tiny one written to ``root``."""
    if arch not in TINY_ARCHS:
        return dict(model_name=arch, pretrained=None)
    import json
    name = 'GpuSuite-' + arch.replace(' ', '-')
    path = osp.join(root, f'{name}.json')
    with open(path, 'w') as f:
        json.dump(TINY_ARCHS[arch], f)
    return dict(model_name=name, pretrained=None, model_config_file=path)


def build_classifier(arch: str, root: str, num_classes: int,
                     device: torch.device, seed: int):
    """A ``CLIPFewShotClassifier`` (no text encoder) with a
    ``TipAdapterHead`` of ``num_classes`` on the random encoder ``arch``."""
    from mmpretrain.registry import MODELS
    torch.manual_seed(seed)
    model = MODELS.build(dict(
        type='CLIPFewShotClassifier',
        backbone=dict(type='OpenCLIPVisualBackbone',
                      **backbone_cfg(arch, root)),
        head=dict(type='TipAdapterHead', num_classes=num_classes)))
    return model.to(device).eval()


def views_loader(root: str, ns: argparse.Namespace, device: torch.device):
    """The cache path's loader: ``ns.augment_epoch`` augmented views of the
    few-shot images, as ``bench_tip_adapter.bench_cache`` builds them, and
    the number of views."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    from tip_adapter_mm.datasets.augmented_views import AugmentedViewsDataset
    from tip_adapter_mm.datasets.few_shot import FewShotDataset
    from tip_adapter_mm.engine.few_shot_builder import encoding_loader_cfg
    pipelines = Config.fromfile(PIPELINES)
    fewshot = FewShotDataset(
        dataset=dict(type='CustomDataset', data_root=root,
                     data_prefix='train', pipeline=pipelines.train_pipeline),
        num_shots=ns.shots, seed=ns.seed)
    views = AugmentedViewsDataset(fewshot, num_views=ns.augment_epoch,
                                  seed=ns.seed)
    # Set up as the package's encoding passes set up a config's loader:
    # in order, pinned on CUDA, workers prefetching, not persistent.
    loader = Runner.build_dataloader(
        encoding_loader_cfg(
            dict(dataset=views, batch_size=ns.batch_size,
                 num_workers=ns.num_workers),
            pin_memory=device.type == 'cuda'),
        seed=ns.seed)
    return loader, len(views)


def feature_difference(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Largest absolute difference and smallest cosine between the
    L2-normalised rows of two ``(S, C)`` feature tensors."""
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    return dict(max_abs_diff=float((a - b).abs().max()),
                min_cosine=float((a * b).sum(-1).min()))


def bench_encoder(name: str, model, loader, num_images: int,
                  ns: argparse.Namespace, timer: Timer, cap: float) -> dict:
    """Bare encoder vs cache path, fp32 vs half, for one encoder."""
    from tip_adapter_mm.engine import extract_features
    device = timer.device
    half = half_precision(device)
    batches = preprocessed_batches(model, loader, ns.max_batches_in_memory)
    feats = {}

    def bare(precision: str) -> Callable[[], None]:

        @torch.no_grad()
        def run() -> None:
            # As extract_features encodes: under autocast.
            with autocast(device, precision):
                for inputs in cycled(batches, num_images):
                    model.encode_image(inputs)

        return run

    def cache(precision: str) -> Callable[[], None]:

        def run() -> None:
            with quiet_stdout():
                feats[precision] = extract_features(
                    model, loader, precision=precision).feats[0]

        return run

    methods = {}
    for precision in ('fp32', half):
        methods[f'bare_{precision}'] = bare(precision)
        methods[f'cache_{precision}'] = cache(precision)
    measured = alternate(methods, ns.repeats, timer, cap)
    row = dict(key=f'encoder {name}', encoder=name, arch=ns.arch,
               images_per_pass=num_images, half=half,
               methods={m: measured[m].summary(num_images, 'images/s')
                        for m in methods})
    for precision in ('fp32', half):
        row[f'cache_over_bare_{precision}'] = statistics.median(
            b / c for b, c in zip(measured[f'bare_{precision}'].seconds,
                                  measured[f'cache_{precision}'].seconds))
    for path in ('bare', 'cache'):
        row[f'{half}_over_fp32_{path}'] = statistics.median(
            a / b for a, b in zip(measured[f'{path}_fp32'].seconds,
                                  measured[f'{path}_{half}'].seconds))
    row[f'features_fp32_vs_{half}'] = feature_difference(
        feats['fp32'], feats[half])
    return row


def encoder_rows(root: str, sizes: dict, ns: argparse.Namespace,
                 timer: Timer, report: Callable[[dict], None]
                 ) -> Tuple[List[dict], Optional[tuple]]:
    """Row 1 for every encoder of ``sizes``; returns the rows and the
    model of the test-time row's encoder (None if its row failed)."""
    loader = num_images = None
    rows, kept = [], None
    for name, arch in sizes['encoders']:
        start = time.perf_counter()
        try:
            model = build_classifier(arch, root,
                                     sizes['test_time']['classes'],
                                     timer.device, ns.seed)
            if loader is None:
                loader, num_images = views_loader(root, ns,
                                                  timer.device)
            ns.arch = arch
            row = bench_encoder(name, model, loader, num_images, ns, timer,
                                sizes['caps']['encoder'])
            if name == sizes['test_time']['encoder']:
                kept = (name, arch, model)
            else:
                del model
        except Exception:  # the other rows still run
            row = dict(key=f'encoder {name}', error=traceback.format_exc())
        row['elapsed_seconds'] = time.perf_counter() - start
        report(row)
        rows.append(row)
    del loader
    return rows, kept


# -- 2. search ----------------------------------------------------------------
def spread_pairs(num_beta: int, num_alpha: int,
                 count: int) -> List[Tuple[int, int]]:
    """``count`` ``(beta, alpha)`` indices evenly spread over the grid in
    its order (beta outer), first and last point included."""
    total = num_beta * num_alpha
    count = max(1, min(count, total))
    flat = sorted({round(i * (total - 1) / max(count - 1, 1))
                   for i in range(count)})
    return [divmod(int(i), num_alpha) for i in flat]


@torch.no_grad()
def reference_loop(head, feats: torch.Tensor, labels: torch.Tensor,
                   pairs: Sequence[Tuple[int, int]],
                   timer: Timer) -> Tuple[List[int], float, float]:
    """Tip-Adapter's reference search on ``pairs`` of the head's grid:
    affinities and zero-shot logits once, then per ``(beta, alpha)``: exp
    of the affinities, dense matmul with the one-hot values, plus the
    zero-shot logits, top-1 hits.

    Returns the hits per pair, the seconds of the set-up and of the pairs.
    """
    grid = head.search_grid()
    betas, alphas = grid['beta'].tolist(), grid['alpha'].tolist()
    keys, values = head.cache.keys, head.cache.values
    start = time.perf_counter()
    affinity = feats @ keys.t()
    clip_logits = head.clip_logits(feats)
    timer.meter.sync()
    setup = time.perf_counter() - start
    hits = []
    for i, j in pairs:
        beta, alpha = betas[i], alphas[j]
        cache_logits = torch.exp(-beta * (1 - affinity)) @ values
        logits = clip_logits + alpha * cache_logits
        hits.append(logits.argmax(dim=-1).eq(labels).sum())
    hits = [int(h) for h in hits]  # one synchronisation, at the end
    timer.meter.sync()
    return hits, setup, time.perf_counter() - start - setup


def search_row(sizes: dict, ns: argparse.Namespace, timer: Timer) -> dict:
    """Row 2: ``grid_search`` vs the reference loop (extrapolated)."""
    from tip_adapter_mm.engine import grid_search
    s, device = sizes['search'], timer.device
    problem = argparse.Namespace(
        seed=ns.seed, search_classes=s['classes'], search_dim=s['dim'],
        search_keys=s['keys'], search_val=s['val'],
        search_steps=tuple(s['steps']))
    head, feats, labels = search_problem(problem, device)
    head.eval()
    chunk, max_elements = search_defaults()
    num_beta, num_alpha = s['steps']
    pairs = spread_pairs(num_beta, num_alpha, s['loop_pairs'])
    state = {}

    def vectorised() -> None:
        state['result'] = grid_search(head, (feats, ), labels, chunk,
                                      max_elements)

    def loop() -> None:
        hits, setup, seconds = reference_loop(head, feats, labels, pairs,
                                              timer)
        state['hits'] = hits
        state.setdefault('loop_split', []).append((setup, seconds))

    measured = alternate(dict(vectorised=vectorised, loop_subset=loop),
                         ns.repeats, timer, sizes['caps']['search'])
    total_pairs = num_beta * num_alpha
    # The split of the timed rounds (the warm-up's first).
    split = state['loop_split'][1:]
    extrapolated = [setup + seconds * total_pairs / len(pairs)
                    for setup, seconds in split]
    vector = measured['vectorised']
    speedups = [e / v for e, v in zip(extrapolated, vector.seconds)]
    result = state['result']
    counts = (result.accuracy_grid * len(labels) / 100).round().long()
    grid_counts = [int(counts[i, j]) for i, j in pairs]
    loop = measured['loop_subset'].summary(1.0, 'runs/s')
    loop_extrapolated = dict(
        seconds=extrapolated,
        median_seconds=statistics.median(extrapolated),
        throughput=1 / statistics.median(extrapolated),
        unit='searches/s', peak_memory_bytes=loop['peak_memory_bytes'],
        how=(f'extrapolated: {len(pairs)} of the {total_pairs} (beta, '
             f'alpha) pairs timed, spread over the grid; set-up + their '
             f'time x {total_pairs / len(pairs):.1f}'))
    return dict(
        key='search', sizes=dict(M=s['val'], NK=s['keys'], N=s['classes'],
                                 C=s['dim'], grid=list(s['steps'])),
        chunk_size=chunk, max_elements=max_elements,
        methods=dict(grid_search=vector.summary(1.0, 'searches/s'),
                     reference_loop=loop_extrapolated,
                     reference_loop_subset=loop),
        speedup=statistics.median(speedups),
        loop_pairs=[list(p) for p in pairs],
        loop_rounds=[dict(setup_seconds=a, pairs_seconds=b)
                     for a, b in split],
        loop_setup_seconds=statistics.median(p[0] for p in split),
        loop_seconds_per_pair=statistics.median(
            p[1] / len(pairs) for p in split),
        loop_hits=state['hits'], grid_search_hits=grid_counts,
        same_hits_on_subset=state['hits'] == grid_counts,
        best=dict(result.best, accuracy=result.accuracy))


# -- 3. Tip-Adapter-F ---------------------------------------------------------
def tip_f_problem(sizes: dict, seed: int, device: torch.device) -> dict:
    """Stored raw views ``(V, S, D)``, their labels, held-out normalised
    features with labels and a text classifier (``bench_heads``' random
    clustered features), on ``device``."""
    t = sizes['tip_f']
    g = torch.Generator().manual_seed(seed)
    data = encoder_problem(g, t['classes'], t['shots'], t['views'], t['dim'],
                           t['val'])
    return {k: v.to(device) for k, v in data.items()}


def tip_f_head(data: dict, num_classes: int, device: torch.device):
    """A ``TipAdapterHead`` with learnable keys, fitted on the views."""
    from tip_adapter_mm.models.heads import TipAdapterHead
    head = TipAdapterHead(num_classes, train_cache_keys=True,
                          **TIP_F_HYPERPARAMETERS).to(device)
    head.set_zero_shot_weights(data['text'])
    head.fit((data['views'], ), data['labels'])
    return head


class TipFTrainer:
    """Tip-Adapter-F's recipe on stored views, driven with torch: AdamW on
    the cache keys, cosine learning rate stepped every iteration, the
    head's loss; ``precision`` 'fp32' or AMP ('fp16' with a gradient
    scaler, 'bf16')."""

    def __init__(self, head, data: dict, epochs: int, batch: int,
                 precision: str, device: torch.device) -> None:
        self.head, self.data, self.batch = head, data, batch
        self.precision, self.device = precision, device
        self.optimizer = torch.optim.AdamW([head.cache.keys], lr=1e-3,
                                           eps=1e-4, weight_decay=0.01)
        num_images = data['views'].shape[1]
        self.iterations = epochs * math.ceil(num_images / batch)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=self.iterations, eta_min=0.0)
        self.scaler = torch.amp.GradScaler(
            device.type, enabled=precision == 'fp16')
        self.losses: List[float] = []

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One iteration on raw features ``x`` ``(B, D)``, labels ``y``."""
        with autocast(self.device, self.precision):
            logits = self.head((F.normalize(x, dim=-1), ))
            loss = self.head.loss_module(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss.detach()

    def epoch(self, e: int, order: torch.Tensor) -> None:
        """Every image once, in view ``e % V``, in ``order`` ``(S, )``."""
        views, labels = self.data['views'], self.data['labels']
        self.head.train()
        losses = []
        for start in range(0, len(order), self.batch):
            idx = order[start:start + self.batch]
            losses.append(self.step(views[e % len(views), idx], labels[idx]))
        self.losses.append(float(torch.stack(losses).mean()))
        self.head.eval()

    @torch.no_grad()
    def top1(self) -> float:
        """Top-1 (%) on the held-out features."""
        logits = self.head((self.data['val'], ))
        hits = logits.argmax(-1).eq(self.data['val_labels']).sum()
        return float(hits) * 100.0 / len(self.data['val_labels'])


def tip_f_row(sizes: dict, ns: argparse.Namespace, timer: Timer) -> dict:
    """Row 3: fp32 vs AMP training, alternating epoch by epoch (the same
    image order for both); epochs past the cap are extrapolated."""
    t, device = sizes['tip_f'], timer.device
    half = half_precision(device)
    data = tip_f_problem(sizes, ns.seed, device)
    head = tip_f_head(data, t['classes'], device)
    zero_shot = TipFTrainer(head, data, 1, t['batch'], 'fp32', device)
    top1_before = zero_shot.top1()
    trainers = {p: TipFTrainer(copy.deepcopy(head), data, t['epochs'],
                               t['batch'], p, device)
                for p in ('fp32', half)}
    # Warm-up: two iterations of each on throwaway copies.
    for p in trainers:
        warm = TipFTrainer(copy.deepcopy(head), data, 1, t['batch'], p,
                           device)
        for _ in range(2):
            warm.step(data['views'][0, :t['batch']],
                      data['labels'][:t['batch']])
    del warm
    num_images = data['views'].shape[1]
    g = torch.Generator().manual_seed(ns.seed)
    measured = {p: Measured() for p in trainers}
    start = time.perf_counter()
    done = 0
    for e in range(t['epochs']):
        order = torch.randperm(num_images, generator=g).to(device)
        names = list(trainers) if e % 2 == 0 else list(trainers)[::-1]
        for p in names:
            timer(lambda: trainers[p].epoch(e, order), measured[p])
        done += 1
        if time.perf_counter() - start > sizes['caps']['tip_f']:
            break
    methods = {}
    for p, m in measured.items():
        later = m.seconds[1:] or m.seconds
        total = sum(m.seconds) + (t['epochs'] - done) * statistics.mean(
            later)
        methods[f'train_{p}'] = dict(
            epoch_seconds=m.seconds, seconds=total, median_seconds=total,
            throughput=num_images * t['epochs'] / total, unit='views/s',
            peak_memory_bytes=max(m.peaks) if m.peaks else None,
            final_loss=trainers[p].losses[-1],
            top1=trainers[p].top1() if done == t['epochs'] else None)
    keys = {p: tr.head.cache.keys.detach().float()
            for p, tr in trainers.items()}
    return dict(
        key='tip_f', half=half,
        sizes=dict(classes=t['classes'], shots=t['shots'], views=t['views'],
                   dim=t['dim'], val=t['val'], epochs=t['epochs'],
                   batch=t['batch'],
                   iterations=trainers['fp32'].iterations),
        how=('measured' if done == t['epochs'] else
             f'extrapolated from {done} of {t["epochs"]} epochs'),
        methods=methods,
        amp_speedup=(methods['train_fp32']['seconds']
                     / methods[f'train_{half}']['seconds']),
        top1_untrained=top1_before,
        keys_max_abs_diff=float((keys['fp32'] - keys[half]).abs().max()))


# -- 4. test time -------------------------------------------------------------
def test_time_row(kept: tuple, root: str, sizes: dict,
                  ns: argparse.Namespace, timer: Timer) -> dict:
    """Row 4: ``predict`` with the cache vs zero-shot (RN50; --reduced:
    the tiny ViT) with a random clustered cache of ImageNet's size."""
    name, arch, model = kept
    t = sizes['test_time']
    dim = int(model.backbone.out_channels)
    problem = argparse.Namespace(
        seed=ns.seed, search_classes=t['classes'], search_dim=dim,
        search_keys=t['keys'], search_val=1, search_steps=(1, 1))
    head, _, _ = search_problem(problem, timer.device)
    model.head.set_zero_shot_weights(head.zero_shot_weights)
    model.head.cache.set(head.cache.keys, head.cache.values)
    del head
    test_ns = copy.copy(ns)
    test_ns.val_size = sizes['val_images']
    test_ns.repeats = ns.repeats
    whole = Measured()
    out, _ = timer(
        lambda: bench_test_time(model, test_ns, root, timer.device), whole)
    row = dict(key='test_time', encoder=name, arch=arch,
               images_per_pass=out['images_per_pass'],
               cache_keys=out['cache_keys'], classes=t['classes'],
               overhead=out['overhead'], target=out['target'],
               met=out['met'], methods={})
    for m in ('tip_adapter', 'zero_shot'):
        row['methods'][m] = dict(
            seconds=out[m]['seconds'],
            median_seconds=out[m]['median_seconds'],
            throughput=out[m]['median_throughput'], unit='images/s',
            peak_memory_bytes=None)
    # bench_test_time alternates the methods batch by batch: one peak for
    # both.
    row['peak_memory_bytes_of_row'] = (max(whole.peaks) if whole.peaks
                                       else None)
    return row


# -- report -------------------------------------------------------------------
def mib(value: Optional[int]) -> str:
    return 'n/a' if value is None else f'{value / 2**20:.0f}'


def method_lines(row: dict, label: str, notes: Dict[str, str]) -> List[str]:
    lines = []
    for name, m in row['methods'].items():
        lines.append(
            f"| {label} | {name} | {m['median_seconds']:.3f} | "
            f"{m['throughput']:.4g} {m['unit']} | "
            f"{mib(m['peak_memory_bytes'])} | {notes.get(name, '')} |")
    return lines


def markdown_table(results: dict) -> str:
    """One line per method of every row: median seconds, throughput, peak
    memory and the row's ratios."""
    m = results['machine']
    lines = [
        f"Suite: {results['mode']}. Device: {m['device_name']}; CPU "
        f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} "
        f"({m['torch_threads']} torch threads); other processes used "
        f"{100 * m['other_processes_cpu_share']:.0f} % of the CPU time; "
        f"memory: {results['memory_kind']}.",
        '',
        '| Row | Method | Median (s) | Throughput | Peak memory (MiB) '
        '| Notes |',
        '|---|---|---|---|---|---|']
    for row in results['rows']:
        key = row['key']
        if 'error' in row:
            lines.append(f'| {key} | failed | | | | see the JSON |')
            continue
        notes = {}
        if key.startswith('encoder'):
            half = row['half']
            label = f"{key} ({row['arch']}, {row['images_per_pass']} views)"
            diff = row[f'features_fp32_vs_{half}']
            for p in ('fp32', half):
                notes[f'cache_{p}'] = (
                    f"cache / bare {row[f'cache_over_bare_{p}']:.2f}")
            for path in ('bare', 'cache'):
                notes[f'{path}_{half}'] = (
                    f"{half} speed-up "
                    f"{row[f'{half}_over_fp32_{path}']:.2f}x")
            notes[f'cache_{half}'] += (
                f"; features vs fp32: max diff {diff['max_abs_diff']:.1e}, "
                f"min cos {diff['min_cosine']:.5f}")
        elif key == 'search':
            s = row['sizes']
            label = (f"search M={s['M']} NK={s['NK']} N={s['N']} "
                     f"C={s['C']}, grid {s['grid'][0]}x{s['grid'][1]}")
            notes['reference_loop'] = (
                f"{row['methods']['reference_loop']['how']}; speed-up "
                f"{row['speedup']:.0f}x")
            notes['reference_loop_subset'] = (
                f"hits equal on the {len(row['loop_pairs'])} pairs: "
                f"{row['same_hits_on_subset']}")
        elif key == 'tip_f':
            s, half = row['sizes'], row['half']
            label = (f"Tip-Adapter-F {s['classes']}x{s['shots']} shots, "
                     f"{s['epochs']} epochs, batch {s['batch']}")
            for name, method in row['methods'].items():
                top1 = method['top1']
                notes[name] = (f"{row['how']}; loss "
                               f"{method['final_loss']:.3f}" +
                               ('' if top1 is None else
                                f', top-1 {top1:.2f} %'))
            notes[f'train_{half}'] += (
                f"; AMP speed-up {row['amp_speedup']:.2f}x")
        else:
            label = (f"test time ({row['arch']}, {row['cache_keys']} keys, "
                     f"{row['classes']} classes)")
            notes['tip_adapter'] = (
                f"overhead {100 * row['overhead']:.1f} %; peak of the row "
                f"{mib(row['peak_memory_bytes_of_row'])} MiB")
        lines += method_lines(row, label, notes)
    lines += ['', 'Elapsed per row (s): ' + ', '.join(
        f"{row['key']} {row['elapsed_seconds']:.1f}"
        for row in results['rows'])]
    return '\n'.join(lines)


def run_rows(args: argparse.Namespace, sizes: dict, device: torch.device,
             root: str, timer: Timer) -> List[dict]:
    """Every selected row, each timed and printed as it ends; a failing
    row is recorded with its traceback and the others still run."""
    ns = argparse.Namespace(
        seed=args.seed, num_classes=sizes['enc_classes'],
        shots=sizes['enc_shots'], augment_epoch=sizes['enc_views'],
        val_size=sizes['val_images'], image_size=sizes['image_size'],
        batch_size=sizes['batch_size'], num_workers=args.num_workers,
        repeats=args.repeats, max_batches_in_memory=math.ceil(
            sizes['enc_classes'] * sizes['enc_shots'] * sizes['enc_views']
            / sizes['batch_size']))
    rows = []

    def report(row: dict) -> None:
        state = 'failed' if 'error' in row else 'done'
        print(f"[{row['key']}] {state} in {row['elapsed_seconds']:.1f} s",
              flush=True)
        if 'error' in row:
            print(row['error'], file=sys.stderr, flush=True)

    def run(key: str, fn: Callable[[], dict]) -> None:
        start = time.perf_counter()
        try:
            row = fn()
        except Exception:
            row = dict(key=key, error=traceback.format_exc())
        row['elapsed_seconds'] = time.perf_counter() - start
        report(row)
        rows.append(row)

    kept = None
    if 'encoders' in args.rows or 'test_time' in args.rows:
        start = time.perf_counter()
        generate_images(root, ns)
        count = ns.num_classes * ns.shots + ns.val_size
        print(f'[images] {count} JPEGs generated in '
              f'{time.perf_counter() - start:.1f} s', flush=True)
    if 'encoders' in args.rows:
        encoder, kept = encoder_rows(root, sizes, ns, timer, report)
        rows += encoder
    if 'search' in args.rows:
        run('search', lambda: search_row(sizes, ns, timer))
    if 'tip_f' in args.rows:
        run('tip_f', lambda: tip_f_row(sizes, ns, timer))
    if 'test_time' in args.rows:
        if kept is None:
            name = sizes['test_time']['encoder']
            arch = dict(sizes['encoders'])[name]
            kept = (name, arch, build_classifier(
                arch, root, sizes['test_time']['classes'], device,
                args.seed))
        run('test_time', lambda: test_time_row(kept, root, sizes, ns, timer))
    return rows


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    device = resolve_device(args.device)
    mode = 'reduced' if args.reduced else 'full'
    sizes = SIZES[mode]
    if args.repeats is None:
        args.repeats = sizes['repeats']
    if args.num_workers is None:
        args.num_workers = (sizes['num_workers'] if args.reduced else min(
            sizes['num_workers'], os.cpu_count() or 1))
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == 'cpu' and not args.reduced:
        warnings.warn('gpu_suite: the full suite on CPU takes hours (one '
                      'grid_search at ImageNet size takes minutes on a few '
                      'cores); --reduced runs in under a minute.')
    from mmengine.registry import init_default_scope
    init_default_scope('mmpretrain')
    timer = Timer(device)
    machine = machine_info(device)
    machine['device_name'] = (machine['gpu'] if device.type == 'cuda' else
                              f"CPU: {machine['cpu']}")
    if device.type == 'cuda':
        props = torch.cuda.get_device_properties(device)
        machine['gpu_memory_bytes'] = int(props.total_memory)
    root = tempfile.mkdtemp(prefix='gpu_suite_')
    start, cpu_start = time.perf_counter(), cpu_seconds()
    try:
        rows = run_rows(args, sizes, device, root, timer)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    total = time.perf_counter() - start
    machine['other_processes_cpu_share'] = other_cpu_share(cpu_start, total)
    results = dict(mode=mode, machine=machine, args=vars(args),
                   memory_kind=timer.memory_kind, rows=rows,
                   total_seconds=total, budget_seconds=BUDGET_SECONDS)
    print()
    print(markdown_table(results))
    print(f'\nTotal {total:.0f} s ({mode}); JSON: {args.out}')
    if mode == 'full' and device.type == 'cuda' and total > BUDGET_SECONDS:
        print(f'Over the budget of {BUDGET_SECONDS:.0f} s for one GPU: lower '
              'the caps in SIZES.', file=sys.stderr)
    write_json(args.out, results)
    failed = [row['key'] for row in rows if 'error' in row]
    if failed:
        raise SystemExit(f'gpu_suite: rows failed: {failed} (tracebacks '
                         f'above and in {args.out}).')
    return results


if __name__ == '__main__':
    main()
