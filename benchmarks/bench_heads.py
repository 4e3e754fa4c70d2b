"""Fit, search and training time of every few-shot head, with peak memory,
at ImageNet-like sizes on random clustered features.

Every head is built from its ImageNet 16-shot config
(``configs/<method>_imagenet_16shot.py``, ``num_classes`` set to
``--classes``) and run on the same problem: ``--views`` raw augmented views
of ``--shots`` images per class, ``--classes`` classes, ``--dim`` channels
(ProLIP: ``--dim-pre`` pre-projection channels and a ``--dim-pre x --dim``
projection; the two-cache Tip-Adapter: a second encoder of ``--dim2``),
``--val`` validation features, a text classifier near the class centres.
Each head runs in its own process (forked), so that its peak memory is its
own. Per head it reports:

* fit: ``head.fit(views, labels)``;
* search: ``grid_search`` on the validation features with
  ``HyperparameterSearchHook``'s chunk size and element bound, for heads
  with a grid (after training for Tip-Adapter-F);
* train, for the heads the runner trains (Tip-Adapter-F, CLIP-Adapter,
  TaskRes, CLAP, ProLIP): epochs of forward, loss, backward and optimizer
  step on the stored views with the recipe of the config (optimizer built by
  MMEngine's ``build_optim_wrapper`` from ``optim_wrapper``; batch from
  ``train_cfg.global_batch_size``; one view per image per epoch with
  ``ViewCyclingSampler``, every view with ``DefaultSampler``), on batches
  already in memory (no data loader, no learning-rate scheduler). A recipe
  that validates every epoch (``few_shot_cfg.protocol`` other than 'none')
  adds one forward pass over the validation features per epoch;
* peak memory of each phase above the memory before it: on CPU the
  process's peak resident set (``VmHWM``, reset through
  ``/proc/self/clear_refs`` before each phase; torch's allocations are not
  seen by ``tracemalloc``), on CUDA ``torch.cuda.max_memory_allocated``.

Work that would take longer than ``--max-seconds`` is measured on less of it
and extrapolated, and the table says so:

* grid searches (Tip-Adapter, Tip-Adapter-F, APE, the cache alone, two
  caches): their cost is linear in the number of beta values (one beta
  chunk at a time), so the search is timed at 1 and ``n`` betas (``n``
  chosen to take about half the budget) and extrapolated linearly to the
  grid's;
* training: epochs are timed one by one until the budget is spent (at least
  ``--min-epochs``); the remaining epochs are counted at the mean of the
  timed ones after the first;
* the linear probe: its fit is timed at 1 and ``n`` L-BFGS iterations and
  extrapolated linearly to ``max_iter`` (an upper bound: L-BFGS stops early
  when the gradient is below ``tol``); its search refits at each ``C`` of
  the grid, timed with 1 iteration per fit and extrapolated with the
  per-iteration cost of the fit;
* LP++: its fit is timed at 1 and ``n`` epochs and extrapolated to its
  epochs; its search is measured on as many snapshots as the full fit keeps
  (copies of the short fit's);
* ProKeR: at ``--proker-classes`` (default on CPU: an eighth, a quarter and
  half of ``--classes``) with the same shots, views and channels, its fit
  and one ``(beta, chunk)`` unit of its search (the solve of one beta for
  every lambda and the hits on one chunk of validation features, the chunk
  scaled with the classes) are timed; time is extrapolated with ``a S^3 +
  b S^2`` and memory with ``c S^2 + d S`` (``S`` = shots x classes; the cost
  model of ``benchmarks/bench_proker.py``), and the search is the unit times
  the betas of the grid times the chunks of validation features it solves
  again for (all of them when the grid's coefficients exceed the element
  bound).

Prints a Markdown table and writes JSON (``--out``).

    python benchmarks/bench_heads.py [--device cuda] [--quick] [--heads ...]
"""
import copy
import gc
import inspect
import math
import multiprocessing as mp
import os
import os.path as osp
import time
import traceback
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from common import (REPO, add_out_arg, cpu_model, cpu_seconds, new_parser,
                    other_cpu_share, write_json)

MiB = 1024**2

#: Problem sizes of ``--quick`` (a smoke run of a few seconds per head).
QUICK = dict(classes=8, shots=2, views=2, dim=32, dim_pre=64, dim2=48,
             val=40, max_seconds=0.5, min_epochs=2)


class Spec:
    """One row: a head built from ``config`` (its ``model.head``, with
    ``overrides``), measured as ``kind``: 'free' (fit, search), 'trained'
    (fit, training, search), 'linear_probe', 'lp_plus_plus', 'proker'."""

    def __init__(self, key: str, name: str, head_type: str, config: str,
                 kind: str = 'free', overrides: Optional[dict] = None):
        self.key, self.name, self.head_type = key, name, head_type
        self.config, self.kind = config, kind
        self.overrides = overrides or {}


SPECS = [
    Spec('zero_shot', 'Zero-shot CLIP', 'ZeroShotHead',
         'zero_shot_imagenet.py'),
    Spec('tip', 'Tip-Adapter', 'TipAdapterHead', 'tip_imagenet_16shot.py'),
    Spec('tip_f', 'Tip-Adapter-F', 'TipAdapterHead',
         'tip_f_imagenet_16shot.py', kind='trained'),
    Spec('tip_dual', 'Tip-Adapter, two caches', 'DualCacheTipAdapterHead',
         'tip_imagenet_16shot_dual_cache_resnet50.py'),
    Spec('ape', 'APE', 'APEHead', 'ape_imagenet_16shot.py'),
    Spec('gda', 'GDA', 'GDAHead', 'gda_imagenet_16shot.py'),
    Spec('gda_no_zero_shot', 'GDA, zero_shot_term=False', 'GDAHead',
         'gda_imagenet_16shot.py', overrides=dict(zero_shot_term=False)),
    Spec('ncm', 'NCM', 'NCMHead', 'ncm_imagenet_16shot.py'),
    Spec('cache_only', 'Cache only', 'CacheOnlyHead',
         '_base_/models/cache_only_resnet50.py'),
    Spec('linear_probe', 'Linear probe', 'LinearProbeHead',
         'linear_probe_imagenet_16shot.py', kind='linear_probe'),
    Spec('lp_plus_plus', 'LP++', 'LPPlusPlusHead',
         'lp_plus_plus_imagenet_16shot.py', kind='lp_plus_plus'),
    Spec('proker', 'ProKeR', 'ProKeRHead', 'proker_imagenet_16shot.py',
         kind='proker'),
    Spec('prolip', 'ProLIP', 'ProLIPHead', 'prolip_imagenet_16shot.py',
         kind='trained'),
    Spec('clip_adapter', 'CLIP-Adapter', 'CLIPAdapterHead',
         'clip_adapter_imagenet_16shot.py', kind='trained'),
    Spec('taskres', 'TaskRes', 'TaskResHead', 'taskres_imagenet_16shot.py',
         kind='trained'),
    Spec('clap', 'CLAP', 'CLAPHead', 'clap_imagenet_16shot.py',
         kind='trained'),
    Spec('coop', 'CoOp', 'CoOpHead', 'coop_imagenet_16shot.py',
         kind='trained'),
    Spec('cocoop', 'CoCoOp', 'CoCoOpHead', 'cocoop_imagenet_16shot.py',
         kind='trained'),
    # Inside the image tower: random images through a random ViT-B/16
    # (tiny with --quick), a few steps of the recipe's batch.
    Spec('vpt', 'VPT', 'VPTHead', 'vpt_imagenet_16shot.py', kind='trained'),
    Spec('maple', 'MaPLe', 'MaPLeHead', 'maple_imagenet_16shot.py',
         kind='trained'),
    Spec('meta_adapter', 'Meta-Adapter', 'MetaAdapterHead',
         'meta_adapter_imagenet_16shot.py', kind='trained'),
    Spec('clip_lora', 'CLIP-LoRA', 'CLIPLoRAHead',
         'clip_lora_imagenet_16shot.py', kind='trained'),
]


# -- arguments ----------------------------------------------------------------
def parse_args(argv: Optional[Sequence[str]] = None):
    parser = new_parser(__doc__)
    add = parser.add_argument
    add('--device', default='cpu', help="'cpu' or 'cuda'")
    add('--classes', type=int, default=1000, help='N')
    add('--shots', type=int, default=16, help='few-shot images per class')
    add('--views', type=int, default=10, help='augmented views per image V')
    add('--dim', type=int, default=1024, help='feature channels D')
    add('--dim-pre', type=int, default=2048,
        help="ProLIP's pre-projection channels")
    add('--dim2', type=int, default=2048,
        help="the two-cache head's second encoder's channels")
    add('--val', type=int, default=10000, help='validation features')
    add('--quick', action='store_true',
        help='small sizes for a smoke run: ' + ', '.join(
            f'{k}={v}' for k, v in QUICK.items()))
    add('--heads', nargs='+', default=None,
        help='rows to run, by key or head type: ' + ', '.join(
            s.key for s in SPECS))
    add('--threads', type=int, default=os.cpu_count(),
        help='torch CPU threads of each head process')
    add('--max-seconds', type=float, default=120.0,
        help='work predicted to take longer is measured on less of it and '
        'extrapolated (see the description)')
    add('--min-epochs', type=int, default=2,
        help='epochs timed at least before extrapolating a training')
    add('--proker-classes', type=int, nargs='+', default=None,
        help='class counts at which ProKeR is timed and from which it is '
        'extrapolated; default on CPU: classes/8, /4, /2 (classes >= 400), '
        'else --classes itself (measured)')
    add('--seed', type=int, default=0)
    add_out_arg(parser, 'bench_heads_<device>.json')
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if osp.basename(args.out) == 'bench_heads_<device>.json':
        args.out = osp.join(osp.dirname(args.out),
                            f'bench_heads_{args.device}.json')
    if args.proker_classes is None:
        args.proker_classes = ([args.classes // 8, args.classes // 4,
                                args.classes // 2]
                               if args.device == 'cpu' and args.classes >= 400
                               else [args.classes])
    return args


def selected_specs(args) -> List[Spec]:
    if not args.heads:
        return list(SPECS)
    wanted = {h.lower() for h in args.heads}
    specs = [s for s in SPECS
             if s.key.lower() in wanted or s.head_type.lower() in wanted]
    known = {s.key.lower() for s in SPECS} | {
        s.head_type.lower() for s in SPECS}
    unknown = sorted(wanted - known)
    if unknown:
        raise SystemExit(f'--heads: unknown {unknown}; known keys: '
                         f'{[s.key for s in SPECS]}')
    return specs


def registered_heads() -> List[str]:
    """Names of the head classes of ``tip_adapter_mm.models.heads`` that are
    registered in MMPretrain's ``MODELS``."""
    from mmpretrain.registry import MODELS
    import tip_adapter_mm.models.heads as heads
    names = []
    for name in heads.__all__:
        obj = getattr(heads, name)
        if (isinstance(obj, type) and issubclass(obj, heads.FewShotHead)
                and MODELS.get(name) is obj):
            names.append(name)
    return names


# -- the problem --------------------------------------------------------------
def clustered(g, count: int, dim: int, centres, labels, spread: float,
              rank_basis):
    """``count`` points around ``centres[labels]``: ``spread`` along a
    shared low-rank subspace plus 10 % of it isotropic (full rank)."""
    import torch
    import torch.nn.functional as F
    rank = rank_basis.shape[1]
    low = F.normalize(torch.randn(count, rank, generator=g), dim=-1)
    iso = torch.randn(count, dim, generator=g) / dim**0.5
    return centres[labels] + spread * (low @ rank_basis.t() + 0.1 * iso)


def encoder_problem(g, classes: int, shots: int, views: int, dim: int,
                    num_val: int) -> dict:
    """Raw views ``(V, S, D)`` of ``shots`` images per class (``S =
    shots * classes``), their labels, normalised validation features
    ``(num_val, D)`` with labels, a text classifier ``(D, N)`` and the
    norms ``(N, )`` of its raw columns."""
    import torch
    import torch.nn.functional as F
    rank = min(64, dim)
    basis, _ = torch.linalg.qr(torch.randn(dim, rank, generator=g))
    shared = F.normalize(torch.randn(1, dim, generator=g), dim=-1)
    every = torch.arange(classes)
    centres = shared + clustered(g, classes, dim, torch.zeros(1, dim),
                                 torch.zeros(classes, dtype=torch.long), 0.6,
                                 basis)
    labels = every.repeat_interleave(shots)
    images = clustered(g, len(labels), dim, centres, labels, 1.2, basis)
    support = torch.stack([
        clustered(g, len(labels), dim, images, torch.arange(len(labels)),
                  0.3, basis) for _ in range(views)
    ])
    val_labels = torch.randint(classes, (num_val, ), generator=g)
    val = F.normalize(
        clustered(g, num_val, dim, centres, val_labels, 1.2, basis), dim=-1)
    text = clustered(g, classes, dim, centres, every, 0.8, basis)
    return dict(views=support, labels=labels, val=val, val_labels=val_labels,
                text=F.normalize(text, dim=-1).t().contiguous(),
                text_norms=text.norm(dim=-1))


def make_problem(args, spec: Spec, classes: int, num_val: int) -> dict:
    """The features ``spec``'s head needs, seeded by ``--seed``."""
    import torch
    g = torch.Generator().manual_seed(args.seed)
    data = encoder_problem(g, classes, args.shots, args.views, args.dim,
                           num_val)
    data['quick'] = bool(args.quick)  # the size of CoOp's text tower
    if spec.head_type == 'DualCacheTipAdapterHead':
        second = encoder_problem(
            torch.Generator().manual_seed(args.seed + 1), classes,
            args.shots, args.views, args.dim2, 0)
        data['views2'] = second['views']
        data['val2'] = torch.nn.functional.normalize(
            torch.randn(num_val, args.dim2, generator=g), dim=-1)
    if spec.head_type == 'ProLIPHead':
        pre = encoder_problem(
            torch.Generator().manual_seed(args.seed + 2), classes,
            args.shots, args.views, args.dim_pre, 0)
        data['views_pre'] = pre['views']
        data['proj_weight'] = torch.randn(
            args.dim_pre, args.dim, generator=g) / args.dim_pre**0.5
        data['proj_bias'] = 0.01 * torch.randn(args.dim, generator=g)
    return data


# -- heads --------------------------------------------------------------------
def load_config(spec: Spec):
    from mmengine.config import Config
    return Config.fromfile(osp.join(REPO, 'configs', spec.config))


def head_cfg(spec: Spec, cfg, args, classes: int, **extra) -> dict:
    """``model.head`` of the config for ``classes`` classes, with the
    spec's overrides; APE keeps the same share of channels as 500 of 1024
    when ``--dim`` is smaller."""
    head = cfg.model.head.to_dict()
    head.update(num_classes=classes, **spec.overrides, **extra)
    if head['type'] == 'APEHead':
        kept = round(head.get('feat_num', 500) * args.dim / 1024)
        head['feat_num'] = max(2, min(head.get('feat_num', 500), kept))
    return head


def build_head(head: dict, data: dict, device):
    """Build the head, move it to ``device`` and give it what the
    classifier gives before ``fit``: zero-shot weights, the raw text
    features' norms (TaskRes, CLAP), ProLIP's projection."""
    from mmpretrain.registry import MODELS
    module = MODELS.build(copy.deepcopy(head)).to(device)
    if getattr(module, 'uses_text', False):
        module.set_zero_shot_weights(data['text'].to(device))
    if hasattr(module, 'set_text_norms'):
        module.set_text_norms(data['text_norms'])
    if hasattr(module, 'set_visual_projection'):
        module.set_visual_projection(data['proj_weight'].to(device),
                                     data['proj_bias'].to(device))
    image_tower = getattr(module, 'uses_image_tower', False)
    if getattr(module, 'uses_text_tower', False) or image_tower:
        clip, tokenizer = random_text_tower(data['text'].shape[0],
                                            data['quick'], image_tower)
        clip.to(device)
    if getattr(module, 'uses_text_tower', False):
        module.set_text_tower(clip, tokenizer, [
            f'class {i}' for i in range(module.num_classes)])
    if image_tower:
        module.set_image_tower(clip.visual)
    return module


def random_text_tower(dim: int, quick: bool, vit: bool = False):
    """An open_clip CLIP with random weights whose text tower is RN50's
    (width 512, 12 layers; ``quick``: width 32, 1 layer) projecting to
    ``dim``, and open_clip's tokenizer (CoOp's prompts run through it).
    ``vit``: with ViT-B/16's image tower (224 px, patch 16, width 768, 12
    layers; ``quick``: 32 px, width 32) and 12 text layers also with
    ``quick``, for the heads that train inside the towers."""
    import open_clip
    from open_clip.model import CLIP
    text = (dict(width=32, heads=1, layers=12 if vit else 1) if quick else
            dict(width=512, heads=8, layers=12))
    vision = dict(image_size=32, patch_size=16, width=32, layers=1,
                  head_width=32)
    if vit:
        vision = (dict(vision, layers=12) if quick else
                  dict(image_size=224, patch_size=16, width=768, layers=12,
                       head_width=64))
    clip = CLIP(embed_dim=dim, vision_cfg=vision,
                text_cfg=dict(context_length=77, vocab_size=49408, **text))
    return clip.eval().requires_grad_(False), open_clip.get_tokenizer('RN50')


def fit_inputs(head, data: dict, device) -> Tuple[tuple, object]:
    if getattr(head, 'uses_image_tower', False):
        return None, data['labels'].to(device)  # fitted without views
    if type(head).__name__ == 'ProLIPHead':
        views = (data['views_pre'].to(device), )
    elif getattr(head, 'num_feature_sets', 1) == 2:
        views = (data['views'].to(device), data['views2'].to(device))
    else:
        views = (data['views'].to(device), )
    return views, data['labels'].to(device)


def val_inputs(head, data: dict, device) -> Tuple[tuple, object]:
    feats = (data['val'].to(device), )
    if getattr(head, 'num_feature_sets', 1) == 2:
        feats = feats + (data['val2'].to(device), )
    return feats, data['val_labels'].to(device)


def search_defaults() -> Tuple[int, int]:
    """``chunk_size`` and ``max_elements`` of ``HyperparameterSearchHook``
    (what a run's search uses unless its config sets them)."""
    from tip_adapter_mm.engine.hooks.search_hook import \
        HyperparameterSearchHook
    params = inspect.signature(HyperparameterSearchHook).parameters
    return (int(params['chunk_size'].default),
            int(params['max_elements'].default))


# -- measuring ----------------------------------------------------------------
def _status_bytes(key: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


class Meter:
    """Wall time and peak memory of a phase (see the module description)."""

    def __init__(self, device):
        self.device = device
        self.cuda = device.type == 'cuda'

    def sync(self) -> None:
        if self.cuda:
            import torch
            torch.cuda.synchronize(self.device)

    def __call__(self, fn: Callable, *a, **kw) -> Tuple[object, float, int]:
        """``(fn(*a, **kw), seconds, peak bytes above the start)``."""
        import torch
        self.sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
        else:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')  # VmHWM := VmRSS
            base = _status_bytes('VmRSS')
        start = time.perf_counter()
        out = fn(*a, **kw)
        self.sync()
        seconds = time.perf_counter() - start
        if self.cuda:
            peak = torch.cuda.max_memory_allocated(self.device) - base
        else:
            peak = _status_bytes('VmHWM') - base
        return out, seconds, max(0, int(peak))


def linear_extrapolation(n1: int, t1: float, n2: int, t2: float,
                         n_full: int) -> float:
    """``t(n_full)`` on the line through ``(n1, t1)``, ``(n2, t2)``; the
    larger run scaled proportionally when timing noise makes the line
    meaningless (slope or intercept below 0)."""
    slope = (t2 - t1) / (n2 - n1)
    fixed = t1 - slope * n1
    if slope <= 0 or fixed < 0:
        return t2 * n_full / n2
    return fixed + slope * n_full


def budget_count(t1: float, n1: int, n_full: int, budget: float) -> int:
    """The count ``n2 >= n1 + 2`` to time next (a slope over at least two
    steps): about half the budget, at most the full count."""
    per_unit = max(t1 / n1, 1e-9)
    return int(min(n_full, max(n1 + 2, budget / 2 / per_unit)))


# -- the outer grid axis of the cache heads' searches -------------------------
def outer_steps(head) -> Optional[int]:
    """Betas of the head's grid when its search cost is linear in them
    (the cache heads), else None."""
    steps = getattr(head, 'search_step', None)
    if isinstance(steps, int):
        return steps
    if isinstance(steps, tuple) and steps:
        return int(steps[0])
    return None


def set_outer_steps(head, n: int, full: int) -> None:
    """Search ``n`` of the ``full`` betas (every cache's beta grid scaled
    alike)."""
    if isinstance(head.search_step, int):
        head.search_step = n
    else:
        head.search_step = (n, ) + tuple(head.search_step[1:])
    second = getattr(head, 'second_search_step', None)
    if second:
        if not hasattr(head, '_bench_second_full'):
            head._bench_second_full = int(second[0])
        scaled = max(1, round(head._bench_second_full * n / full))
        head.second_search_step = (scaled, ) + tuple(second[1:])


def grid_points(head) -> int:
    return sum(int(np.prod([len(v) for v in stage.grid.values()]))
               for stage in head.search_stages())


def measure_search(head, meter: Meter, val, val_labels, budget: float,
                   chunk: int, max_elements: int) -> dict:
    """``grid_search`` timed; extrapolated over the betas of a cache head
    when the whole grid would exceed the budget."""
    from tip_adapter_mm.engine import grid_search

    def run():
        return meter(grid_search, head, val, val_labels, chunk, max_elements)

    head.eval()
    full = outer_steps(head)
    points = grid_points(head)
    if full is None or full == 1:
        result, seconds, peak = run()
        return dict(seconds=seconds, peak_bytes=peak, points=points,
                    accuracy=result.accuracy, how='measured')
    set_outer_steps(head, 1, full)
    _, t1, p1 = run()
    if t1 * full <= budget:
        set_outer_steps(head, full, full)
        result, seconds, peak = run()
        return dict(seconds=seconds, peak_bytes=max(peak, p1), points=points,
                    accuracy=result.accuracy, how='measured')
    n2 = budget_count(t1, 1, full, budget)
    set_outer_steps(head, n2, full)
    result, t2, p2 = run()
    set_outer_steps(head, full, full)
    if n2 >= full:
        return dict(seconds=t2, peak_bytes=max(p1, p2), points=points,
                    accuracy=result.accuracy, how='measured')
    return dict(seconds=linear_extrapolation(1, t1, n2, t2, full),
                peak_bytes=max(p1, p2), points=points, how=(
                    f'extrapolated from 1 and {n2} of {full} betas'),
                timed=[[1, t1], [n2, t2]])


# -- training on the stored views ---------------------------------------------
def recipe(cfg, num_images: int, num_views: int) -> dict:
    """Epochs, batch, sampler rule and validation of a training config."""
    train = cfg.train_cfg
    sampler = cfg.train_dataloader.get('sampler', {})
    cycling = sampler.get('type') == 'ViewCyclingSampler'
    per_epoch = num_images if cycling else num_images * num_views
    batch = train.get('global_batch_size') or cfg.train_dataloader.get(
        'batch_size')
    batch = per_epoch if batch == 'all' else int(batch)
    protocol = cfg.get('few_shot_cfg', {}).get('protocol', 'val')
    epochs = int(train.max_epochs)
    interval = int(train.get('val_interval', 1))
    return dict(epochs=epochs, batch=batch, cycling=cycling,
                shuffle=bool(sampler.get('shuffle', True)),
                samples_per_epoch=per_epoch,
                iterations_per_epoch=math.ceil(per_epoch / batch),
                optimizer=cfg.optim_wrapper.optimizer.to_dict(),
                protocol=protocol,
                validations=0 if protocol == 'none' else epochs // interval,
                val_batch=int(cfg.val_dataloader.get('batch_size', 256)))


def train_epochs(head, cfg, plan: dict, views, labels, meter: Meter,
                 budget: float, min_epochs: int, seed: int) -> dict:
    """Train ``head`` epoch by epoch with the recipe until the budget is
    spent; extrapolate to the recipe's epochs."""
    import torch
    import torch.nn.functional as F
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DefaultScope

    from mmpretrain.structures import DataSample
    device = labels.device
    num_views, num_images = views.shape[:2]
    image_tower = getattr(head, 'uses_image_tower', False)
    size = head.image_tower.image_size[0] if image_tower else 0
    samples = [DataSample().set_gt_label(int(y)).to(device)
               for y in labels.tolist()]
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        optim = build_optim_wrapper(head, copy.deepcopy(cfg.optim_wrapper))
    head.train()
    g = torch.Generator().manual_seed(seed)
    # A first epoch longer than the budget (CoOp: every step runs the text
    # tower over all N prompts) stops after its budget, at least 2 steps,
    # and is extrapolated per step.
    partial = {}

    def epoch(e: int) -> None:
        deadline = time.perf_counter() + budget if e == 0 else math.inf
        if plan['cycling']:
            images = (torch.randperm(num_images, generator=g)
                      if plan['shuffle'] else torch.arange(num_images))
            view_idx = torch.full_like(images, e % num_views)
        else:
            flat = torch.randperm(num_views * num_images, generator=g)
            view_idx, images = flat // num_images, flat % num_images
        for start in range(0, len(images), plan['batch']):
            img = images[start:start + plan['batch']]
            if image_tower:  # random images, encoded by the head
                x = head.encode_images(torch.randn(
                    len(img), 3, size, size, generator=g).to(device))
            else:
                x = views[view_idx[start:start + plan['batch']].to(device),
                          img.to(device)]
            if head.normalize_inputs:
                x = F.normalize(x, dim=-1)
            losses = head.loss((x, ), [samples[i] for i in img.tolist()])
            optim.update_params(
                sum(v for k, v in losses.items() if 'loss' in k))
            steps = start // plan['batch'] + 1
            if (time.perf_counter() > deadline and steps >= 2
                    and steps < plan['iterations_per_epoch']):
                partial['steps'] = steps
                return

    seconds, peaks = [], []
    while len(seconds) < plan['epochs']:
        _, t, peak = meter(epoch, len(seconds))
        seconds.append(t)
        peaks.append(peak)
        if sum(seconds) >= budget and len(seconds) >= min_epochs:
            break
        if partial:
            break
    head.eval()
    done = len(seconds)
    later = seconds[1:] or seconds
    total = sum(seconds) + (plan['epochs'] - done) * float(np.mean(later))
    how = ('measured' if done == plan['epochs'] else
           f'extrapolated from {done} of {plan["epochs"]} epochs')
    if partial:
        steps = plan['iterations_per_epoch'] * plan['epochs']
        total = seconds[0] / partial['steps'] * steps
        how = f'extrapolated from {partial["steps"]} of {steps} steps'
        done = 0
    return dict(seconds=total, peak_bytes=max(peaks), how=how,
                epochs_timed=done, epoch_seconds=seconds)


def validation_pass(head, val, batch: int, meter: Meter) -> float:
    """One forward pass over the validation features, in the val loader's
    batches (what a validating recipe adds per epoch)."""
    import torch

    def run():
        with torch.no_grad():
            for start in range(0, len(val[0]), batch):
                head(tuple(f[start:start + batch] for f in val))

    head.eval()
    return meter(run)[1]


# -- one head, in its own process ---------------------------------------------
def run_spec(spec: Spec, args) -> dict:
    """Everything measured for one row (called in a forked process)."""
    import torch
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    meter = Meter(device)
    chunk, max_elements = search_defaults()
    cfg = load_config(spec)
    row = dict(key=spec.key, name=spec.name, head_type=spec.head_type,
               config=spec.config, threads=torch.get_num_threads())
    if device.type == 'cuda':
        row['device_name'] = torch.cuda.get_device_name(device)
    data = make_problem(args, spec, args.classes, args.val)
    budget = args.max_seconds
    if spec.kind == 'linear_probe':
        row.update(run_linear_probe(spec, cfg, args, data, meter, chunk,
                                    max_elements))
        return row
    if spec.kind == 'lp_plus_plus':
        row.update(run_lp_plus_plus(spec, cfg, args, data, meter, chunk,
                                    max_elements))
        return row
    extra = {}
    if spec.kind == 'proker' and args.quick:
        extra['exact_max_samples'] = 0  # the Nystrom path, as at full size
    head = build_head(head_cfg(spec, cfg, args, args.classes, **extra), data,
                      device)
    views, labels = fit_inputs(head, data, device)
    _, row['fit_seconds'], row['fit_peak_bytes'] = meter(
        head.fit, views, labels)
    row['fit_how'] = 'measured'
    val, val_labels = val_inputs(head, data, device)
    if spec.kind == 'trained':
        # Heads inside the image tower: one image per few-shot sample
        # and step, no views (only their shape is read).
        train_views = (data['views'][:1] if views is None else views[0])
        plan = recipe(cfg, train_views.shape[1], train_views.shape[0])
        row['recipe'] = plan
        train = train_epochs(head, cfg, plan, train_views, labels, meter,
                             budget, args.min_epochs, args.seed)
        row.update(train_seconds=train['seconds'],
                   train_peak_bytes=train['peak_bytes'],
                   train_how=train['how'],
                   epoch_seconds=train['epoch_seconds'])
        if plan['validations']:
            if type(head).__name__ == 'ProLIPHead':
                raise NotImplementedError('validation of pre-projection '
                                          'features')
            one = validation_pass(head, val, plan['val_batch'], meter)
            row.update(validation_pass_seconds=one,
                       validation_seconds=one * plan['validations'])
    if head.search_stages():
        search = measure_search(head, meter, val, val_labels, budget, chunk,
                                max_elements)
        row.update({f'search_{k}': v for k, v in search.items()})
    return row


def run_linear_probe(spec, cfg, args, data, meter, chunk, max_elements):
    """Fit at 1 and ``n`` L-BFGS iterations, search with 1 iteration per
    fit; extrapolated to ``max_iter`` (or measured when it fits the
    budget)."""
    from tip_adapter_mm.engine import grid_search
    device = meter.device
    full = int(head_cfg(spec, cfg, args, args.classes).get('max_iter', 1000))

    def fit(iterations):
        head = build_head(head_cfg(spec, cfg, args, args.classes,
                                   max_iter=iterations), data, device)
        views, labels = fit_inputs(head, data, device)
        _, seconds, peak = meter(head.fit, views, labels)
        return head, seconds, peak

    val, val_labels = val_inputs(None, data, device)
    head, t1, p1 = fit(1)
    result, s1, sp1 = meter(grid_search, head, val, val_labels, chunk,
                            max_elements)
    refits = len(head.c_grid)
    if t1 * full * (1 + refits) <= args.max_seconds:
        del head
        gc.collect()
        head, seconds, peak = fit(full)
        result, search, speak = meter(grid_search, head, val, val_labels,
                                      chunk, max_elements)
        return dict(fit_seconds=seconds, fit_peak_bytes=peak,
                    fit_how='measured', search_seconds=search,
                    search_peak_bytes=speak, search_points=refits,
                    search_how='measured', search_accuracy=result.accuracy)
    del head
    gc.collect()
    n2 = budget_count(t1, 1, full, args.max_seconds)
    head, t2, p2 = fit(n2)
    per_iteration = (t2 - t1) / (n2 - 1)
    if per_iteration <= 0:
        per_iteration = t2 / n2
    return dict(
        fit_seconds=linear_extrapolation(1, t1, n2, t2, full),
        fit_peak_bytes=max(p1, p2),
        fit_how=(f'extrapolated from 1 and {n2} L-BFGS iterations to '
                 f'max_iter={full} (upper bound)'),
        fit_timed=[[1, t1], [n2, t2]],
        search_seconds=s1 + refits * per_iteration * (full - 1),
        search_peak_bytes=sp1, search_points=refits,
        search_how=(f'{refits} refits timed at 1 iteration, extrapolated to '
                    f'{full} each (upper bound)'))


def run_lp_plus_plus(spec, cfg, args, data, meter, chunk, max_elements):
    """Fit at 1 and ``n`` epochs (a snapshot after each), extrapolated to
    the recipe's epochs; search on as many snapshots as the recipe keeps."""
    import torch
    from tip_adapter_mm.engine import grid_search
    from tip_adapter_mm.models.heads.lp_plus_plus_head import \
        snapshot_epochs
    device = meter.device
    full_cfg = head_cfg(spec, cfg, args, args.classes)
    full = int(full_cfg.get('epochs', 300))
    keep = snapshot_epochs(full, int(full_cfg.get('snapshot_interval', 10)),
                           full_cfg.get('epoch') or full)

    def fit(epochs, **extra):
        head = build_head(head_cfg(spec, cfg, args, args.classes,
                                   epochs=epochs, **extra), data, device)
        views, labels = fit_inputs(head, data, device)
        _, seconds, peak = meter(head.fit, views, labels)
        return head, seconds, peak

    head, t1, p1 = fit(1, snapshot_interval=1, epoch=None)
    if t1 * full <= args.max_seconds:
        del head
        gc.collect()
        head, seconds, peak = fit(full)
        result, search, speak = meter(grid_search, head, *val_inputs(
            head, data, device), chunk, max_elements)
        return dict(fit_seconds=seconds, fit_peak_bytes=peak,
                    fit_how='measured', search_seconds=search,
                    search_peak_bytes=speak, search_points=len(keep),
                    search_how='measured', search_accuracy=result.accuracy)
    del head
    gc.collect()
    n2 = budget_count(t1, 1, full, args.max_seconds)
    head, t2, p2 = fit(n2, snapshot_interval=1, epoch=None)
    # The search's cost is that of its snapshots: give the head as many as
    # the full fit keeps (copies of the short fit's).
    idx = torch.arange(len(keep), device=head.snapshot_epochs.device) % n2
    head.snapshot_weights = head.snapshot_weights[idx].contiguous()
    head.snapshot_bias = head.snapshot_bias[idx].contiguous()
    head.snapshot_alpha = head.snapshot_alpha[idx].contiguous()
    head.snapshot_epochs = torch.tensor(keep, device=idx.device)
    head.set_hyperparameters(epoch=float(keep[-1]))
    _, search, speak = meter(grid_search, head, *val_inputs(
        head, data, device), chunk, max_elements)
    return dict(
        fit_seconds=linear_extrapolation(1, t1, n2, t2, full),
        fit_peak_bytes=max(p1, p2),
        fit_how=f'extrapolated from 1 and {n2} of {full} epochs',
        fit_timed=[[1, t1], [n2, t2]], search_seconds=search,
        search_peak_bytes=speak, search_points=len(keep),
        search_how=f'measured on {len(keep)} snapshots (copies)')


# -- ProKeR at smaller sizes --------------------------------------------------
def run_proker_size(spec: Spec, args, classes: int) -> dict:
    """ProKeR's fit and one ``(beta, chunk)`` unit of its search at
    ``classes`` classes (called in a forked process)."""
    import torch
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    meter = Meter(device)
    chunk, max_elements = search_defaults()
    cfg = load_config(spec)
    full_chunks = max(1, math.ceil(args.val / chunk))
    rows = max(1, round(args.val / full_chunks * classes / args.classes))
    data = make_problem(args, spec, classes, rows)
    head = build_head(head_cfg(spec, cfg, args, classes), data, device)
    views, labels = fit_inputs(head, data, device)
    _, fit_seconds, fit_peak = meter(head.fit, views, labels)
    beta0 = head.beta_range[0]
    betas = head.beta_range[2]
    lambdas = head.lmbda_range[2]
    head.beta_range = (beta0, beta0, 1)
    val, val_labels = val_inputs(head, data, device)
    _, unit_seconds, unit_peak = meter(head.count_correct, val, val_labels,
                                       {}, max_elements)
    return dict(classes=classes, S=classes * args.shots, M=head.num_samples,
                landmarks=head.num_centres, exact=head.uses_exact_solve,
                fit_seconds=fit_seconds, fit_peak_bytes=fit_peak,
                unit_rows=rows, unit_seconds=unit_seconds,
                unit_peak_bytes=unit_peak, betas=betas, lambdas=lambdas,
                exact_max_samples=head.exact_max_samples)


def power_fit(s: np.ndarray, y: np.ndarray, powers: Sequence[int],
              target: float) -> float:
    """Least squares ``y = sum_k c_k s^p_k``, evaluated at ``target``."""
    basis = np.stack([s**p for p in powers], 1)
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    return float(sum(c * target**p for c, p in zip(coef, powers)))


def proker_row(args, sizes: List[dict]) -> dict:
    """The ProKeR row at ``--classes``: measured when ``--classes`` is one
    of the sizes, else extrapolated from the smaller ones (which, when
    there are at least two, are extrapolated anyway as a cross-check)."""
    chunk, max_elements = search_defaults()
    target = float(args.classes * args.shots)
    full = next((r for r in sizes if r['classes'] == args.classes), None)
    smaller = [r for r in sizes if r['classes'] < args.classes]
    betas, lambdas = sizes[0]['betas'], sizes[0]['lambdas']
    chunks = max(1, math.ceil(args.val / chunk))
    # _GridCounter solves the grid once only when all its coefficients fit
    # max_elements; otherwise once per chunk of validation features.
    fits = betas * lambdas * target * args.classes <= max_elements
    solves = 1 if fits else chunks
    per_chunk = (
        'the grid solved once' if fits else
        f'the grid solved again for each of the {chunks} chunks of '
        f'{chunk} val features')
    M = int(target * args.views)
    names = ', '.join(str(r['classes']) for r in smaller)
    if any(r['exact'] for r in smaller) and M > sizes[0]['exact_max_samples']:
        names += (' (some solved exactly, not by the Nystrom path of the '
                  'full size: pass larger --proker-classes)')
    estimate = None
    if len(smaller) >= 2:
        s = np.array([r['S'] for r in smaller], dtype=float)
        # Memory: the kernel chunks are bounded by max_elements (a
        # constant), the views grow with S, the m x m systems with S^2.
        powers = (0, 1, 2) if len(smaller) >= 3 else (1, 2)

        def at_target(key, pw):
            return power_fit(s, np.array([r[key] for r in smaller],
                                         dtype=float), pw, target)

        estimate = dict(
            fit_seconds=at_target('fit_seconds', (3, 2)),
            fit_peak_bytes=int(at_target('fit_peak_bytes', powers)),
            unit_seconds=at_target('unit_seconds', (3, 2)),
            unit_peak_bytes=int(at_target('unit_peak_bytes', powers)))
        estimate['search_seconds'] = estimate['unit_seconds'] * betas * solves
    if full is None and estimate is None:
        raise ValueError('--proker-classes needs --classes itself or at '
                         'least two smaller class counts.')
    source = full or estimate
    if full:
        fit_how = 'measured'
        unit_how = 'measured'
    else:
        fit_how = (f'extrapolated from {names} classes (a S^3 + b S^2; '
                   'memory ' + ' + '.join(
                       f'S^{p}' for p in powers) + ' fitted)')
        unit_how = f'extrapolated from {names} classes'
    return dict(
        fit_seconds=source['fit_seconds'],
        fit_peak_bytes=int(source['fit_peak_bytes']),
        fit_how=fit_how,
        search_seconds=source['unit_seconds'] * betas * solves,
        search_peak_bytes=int(source['unit_peak_bytes']),
        search_points=betas * lambdas,
        search_how=(f'{betas} betas x one (beta, chunk) unit ({unit_how}), '
                    f'{per_chunk}'),
        proker=dict(sizes=sizes, estimate_from_smaller=estimate, M=M,
                    exact=M <= sizes[0]['exact_max_samples'],
                    landmarks=int(target), grid_solved_per_chunk=not fits,
                    support_views_bytes=M * args.dim * 4,
                    exact_solve_bytes=2 * M * M * 8))


# -- processes ----------------------------------------------------------------
def in_fork(fn: Callable, *a) -> Tuple[Optional[dict], Optional[str]]:
    """``fn(*a)`` in a forked process: ``(result, None)`` or ``(None,
    error)``."""
    ctx = mp.get_context('fork')
    receive, send = ctx.Pipe(duplex=False)

    def target():
        try:
            send.send((fn(*a), None))
        except BaseException:  # noqa: B902 -- reported to the parent
            send.send((None, traceback.format_exc()))
        finally:
            send.close()

    proc = ctx.Process(target=target)
    proc.start()
    send.close()
    try:
        result = receive.recv()
    except EOFError:
        result = (None, 'the process died (out of memory?)')
    proc.join()
    if proc.exitcode not in (0, None) and result[1] is None:
        result = (None, f'exit code {proc.exitcode}')
    return result


def run_row(spec: Spec, args) -> dict:
    start, wall = cpu_seconds(), time.perf_counter()
    if spec.kind == 'proker' and args.proker_classes != [args.classes]:
        sizes, error = [], None
        for classes in args.proker_classes:
            size, error = in_fork(run_proker_size, spec, args, classes)
            if error:
                break
            sizes.append(size)
        row = dict(key=spec.key, name=spec.name, head_type=spec.head_type,
                   config=spec.config)
        if error is None:
            row.update(proker_row(args, sizes))
    else:
        row, error = in_fork(run_spec, spec, args)
        row = row or dict(key=spec.key, name=spec.name,
                          head_type=spec.head_type, config=spec.config)
    wall = time.perf_counter() - wall
    row.update(wall_seconds=wall,
               other_cpu_share=other_cpu_share(start, wall))
    if error:
        row['error'] = error
    return row


# -- report -------------------------------------------------------------------
def total(row: dict) -> Optional[float]:
    if 'fit_seconds' not in row:
        return None
    return sum(row.get(k, 0.0) for k in ('fit_seconds', 'search_seconds',
                                         'train_seconds',
                                         'validation_seconds'))


def seconds(value: Optional[float]) -> str:
    if value is None:
        return '-'
    if value >= 100:
        return f'{value:,.0f}'
    if value >= 1:
        return f'{value:.1f}'
    return f'{value:.3f}'


def times(ratio: float) -> str:
    if ratio >= 10:
        return f'{ratio:,.0f}x'
    if ratio >= 0.995:
        return f'{ratio:.1f}x'
    return f'{ratio:.2f}x' if ratio >= 0.01 else '< 0.01x'


def mib(value: Optional[int]) -> str:
    return '-' if value is None else f'{value / MiB:,.0f}'


def markdown(rows: List[dict], base: Optional[float]) -> str:
    lines = [
        '| head | fit (s) | search (s) | train (s) | total (s) | total vs '
        'Tip-Adapter | peak memory fit / search / train (MiB) | how |',
        '|---|---|---|---|---|---|---|---|',
    ]
    for row in rows:
        if 'error' in row:
            lines.append(f"| {row['name']} | error: "
                         f"{row['error'].strip().splitlines()[-1]} "
                         '| | | | | | |')
            continue
        search = row.get('search_seconds')
        search_cell = seconds(search)
        if search is not None:
            search_cell += f" ({row['search_points']:,} points)"
        train = row.get('train_seconds')
        train_cell = seconds(train)
        if row.get('validation_seconds'):
            train_cell += (f" + {seconds(row['validation_seconds'])} "
                           f"validating")
        how = [f"fit {row['fit_how']}"] if row['fit_how'] != 'measured' \
            else []
        for phase in ('search', 'train'):
            text = row.get(f'{phase}_how')
            if text and text != 'measured':
                how.append(f'{phase} {text}')
        tot = total(row)
        ratio = times(tot / base) if base and tot is not None else '-'
        memory = ' / '.join(
            mib(row.get(f'{phase}_peak_bytes'))
            for phase in ('fit', 'search', 'train'))
        lines.append(
            f"| {row['name']} | {seconds(row['fit_seconds'])} | "
            f"{search_cell} | {train_cell} | {seconds(tot)} | {ratio} | "
            f"{memory} | {'; '.join(how) or 'measured'} |")
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    # Imported once here, before forking, for every head process; nothing
    # runs on torch in this process (CUDA is initialised in the children).
    import mmengine.optim  # noqa: F401
    import torch
    from mmengine.config import Config  # noqa: F401

    import mmpretrain.structures  # noqa: F401
    import tip_adapter_mm.engine.hooks.search_hook  # noqa: F401
    specs = selected_specs(args)
    registered = registered_heads()
    skipped = [dict(key=s.key, name=s.name, head_type=s.head_type,
                    note=f'{s.head_type} is not registered')
               for s in specs if s.head_type not in registered]
    specs = [s for s in specs if s.head_type in registered]
    covered = {s.head_type for s in SPECS}
    unbenchmarked = [n for n in registered if n not in covered]
    machine = (f'{cpu_model()}, {os.cpu_count()} cores, torch threads '
               f'{args.threads}' if args.device == 'cpu' else args.device)
    print(f'Heads at N={args.classes} classes x {args.shots} shots x '
          f'{args.views} views, D={args.dim} (ProLIP {args.dim_pre} -> '
          f'{args.dim}; second cache {args.dim2}), {args.val} val features; '
          f'{machine}; torch {torch.__version__}; budget per measurement '
          f'{args.max_seconds:g} s\n', flush=True)
    load_before = os.getloadavg()
    start, wall = cpu_seconds(), time.perf_counter()
    rows = []
    for spec in specs:
        row = run_row(spec, args)
        rows.append(row)
        status = ('error' if 'error' in row else
                  f"fit {seconds(row.get('fit_seconds'))} s, search "
                  f"{seconds(row.get('search_seconds'))} s, train "
                  f"{seconds(row.get('train_seconds'))} s")
        print(f"{spec.name}: {status} ({row['wall_seconds']:.0f} s wall, "
              f"other processes {100 * row['other_cpu_share']:.0f} % of "
              'the CPU)', flush=True)
        if 'error' in row:
            print(row['error'], flush=True)
    wall = time.perf_counter() - wall
    share = other_cpu_share(start, wall)
    if args.device == 'cuda':
        names = {r.get('device_name') for r in rows} - {None}
        machine = ', '.join(sorted(names)) or machine
    tip = next((r for r in rows if r['key'] == 'tip' and 'error' not in r),
               None)
    print(f'\n{machine}; torch {torch.__version__}; other processes used '
          f'{100 * share:.0f} % of the CPU (load average '
          f'{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after)\n')
    print(markdown(rows, total(tip) if tip else None))
    for item in skipped:
        print(f"\nSkipped {item['name']}: {item['note']}.")
    if unbenchmarked:
        print(f'\nRegistered heads without a row here: {unbenchmarked}.')
    proker = next((r for r in rows if 'proker' in r), None)
    if proker:
        info = proker['proker']
        solve = ('solved exactly' if info['exact'] else
                 f"{info['landmarks']:,} Nystrom landmarks")
        print(f"\nProKeR at {args.classes} classes: M={info['M']:,} views, "
              f"{solve}; the support views it keeps take "
              f"{info['support_views_bytes'] / MiB:,.0f} MiB; the exact "
              'solve would need '
              f"{info['exact_solve_bytes'] / 1024**3:,.0f} GiB.")
        estimate = info['estimate_from_smaller']
        if estimate and proker['fit_how'] == 'measured':
            print('Extrapolated from the smaller sizes instead: fit '
                  f"{seconds(estimate['fit_seconds'])} s, "
                  f"{mib(estimate['fit_peak_bytes'])} MiB; search "
                  f"{seconds(estimate['search_seconds'])} s, "
                  f"{mib(estimate['unit_peak_bytes'])} MiB.")
    write_json(args.out, dict(
        args=vars(args), machine=machine, torch=torch.__version__,
        threads=args.threads,
        omp_num_threads=os.environ.get('OMP_NUM_THREADS'),
        search=dict(zip(('chunk_size', 'max_elements'), search_defaults())),
        other_cpu_share=share, load_average_before=load_before,
        load_average_after=os.getloadavg(), wall_seconds=wall, rows=rows,
        skipped=skipped, registered=registered,
        unbenchmarked=unbenchmarked))
    print(f'\nWrote {args.out}')
    if any('error' in r for r in rows):
        raise SystemExit(1)


if __name__ == '__main__':
    main()
