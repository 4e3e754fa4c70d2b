"""Benchmark the shared feature store on a sweep: encoder work and wall time,
before vs after.

A sweep of 2 methods (Tip-Adapter, ``configs/_base_/schedules/tip_adapter.py``;
Tip-Adapter-F, ``configs/_base_/schedules/tip_adapter_f.py``) x ``--shots`` x
``--seeds`` runs through the real ``tools/sweep.py`` (a subprocess, one
process per cell) in two modes, side by side in one run:

* ``after`` (this version): the configs as they are. One sweep invocation
  for both configs: every cell shares one feature store
  (``tools/sweep.py`` sets ``few_shot_cfg.feature_dir=<work-dir>/
  feature_cache``), and validation and test run on stored features
  (``StoredFeaturesValLoop``, ``StoredFeaturesTestLoop``).
* ``before`` (the behaviour before the feature store, emulated with the same
  code): one sweep invocation per method config, each with its own
  ``--work-dir`` (so each config has its own feature store, as before), and
  ``val_cfg = dict()``, ``test_cfg = dict()`` in the configs: MMEngine's
  plain ``ValLoop``/``TestLoop``, which encode the val/test images every
  time they run, as the old code did.

Everything is built in a temporary directory: an open_clip ViT with random
weights and generated JPEGs in class folders (``train/``, ``val/``,
``test/``). The configs inherit the real ``configs/_base_`` files; the only
swap is the visual backbone, ``CountingOpenCLIPVisualBackbone`` (a plugin
module written by the benchmark, imported through ``custom_imports`` with its
folder on ``PYTHONPATH``), which appends one fingerprint line per encoded
image to a log, plus a hook that writes ``mark before_train`` / ``mark
after_train`` lines. Each line is classified as a test image, a val image or
other (the few-shot views) by comparing it with the fingerprints of the test
and val images computed independently here: each split's dataset is built
from the config's dataloader, its test pipeline run, the classifier's data
preprocessor applied (``FeatureOrImageDataPreprocessor`` with CLIP's mean and
std, BGR to RGB) and each preprocessed image fingerprinted with the same
function.

For each mode: the wall time of the whole sweep, and the encoder forward
passes (images encoded) over the test images (``after``: exactly the test
size), the val images, the few-shot views, and during Tip-Adapter-F's
training epochs (train + val, between ``before_train`` and ``after_train``;
``after``: 0).

Usage (the defaults take a few minutes on a 2-core CPU)::

    python benchmarks/bench_feature_store.py
    # smoke run: one seed, few epochs
    python benchmarks/bench_feature_store.py --seeds 1 --epochs 2
"""
import argparse
import json
import os
import os.path as osp
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Dict, List, Optional, Sequence

import numpy as np
from common import (REPO, add_model_args, add_out_arg, cpu_model,
                    cpu_seconds, new_parser, other_cpu_share,
                    write_clip_model, write_json)
from PIL import Image

BASE = osp.join(REPO, 'configs', '_base_')
SWEEP = osp.join(REPO, 'tools', 'sweep.py')
MODEL_NAME = 'FeatureStoreBench-ViT'
MODES = ('before', 'after')
#: Config stem -> schedule; the sweep names the rows Tip-Adapter and
#: Tip-Adapter-F (the head's method_name, -F when the config trains).
METHODS = {'tip_bench': 'tip_adapter', 'tip_f_bench': 'tip_adapter_f'}
PLUGIN_MODULE = 'feature_store_bench_plugin'

#: The counting backbone and the marker hook (as tests/conftest.py's
#: COUNTING_PLUGIN, but with MMEngine's 'HIGHEST' priority, and the
#: fingerprint a hash of the image tensor's bytes).
#: The benchmark imports this module too, for the same fingerprint function.
PLUGIN = '''
import hashlib

import torch
from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS, MODELS
from tip_adapter_mm.models import OpenCLIPVisualBackbone


def image_fingerprint(image):
    """One preprocessed image (3, H, W) -> a hash of its float32 bytes."""
    data = image.detach().to('cpu', torch.float32).contiguous().numpy()
    return hashlib.sha1(data.tobytes()).hexdigest()[:20]


@MODELS.register_module()
class CountingOpenCLIPVisualBackbone(OpenCLIPVisualBackbone):
    """Appends one fingerprint line per encoded image to ``count_file``."""

    def __init__(self, count_file, **kwargs):
        super().__init__(**kwargs)
        self.count_file = count_file

    def forward(self, x):
        with open(self.count_file, 'a') as f:
            f.writelines(image_fingerprint(img) + '\\n' for img in x)
        return super().forward(x)


@HOOKS.register_module()
class EncoderCountMarkerHook(Hook):
    """Writes 'mark before_train' / 'mark after_train' to ``count_file``,
    before every other hook of these stages."""
    priority = 'HIGHEST'

    def __init__(self, count_file):
        self.count_file = count_file

    def _mark(self, what):
        with open(self.count_file, 'a') as f:
            f.write(f'mark {what}\\n')

    def before_train(self, runner):
        self._mark('before_train')

    def after_train(self, runner):
        self._mark('after_train')
'''


# -- arguments and machine ----------------------------------------------------
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = new_parser(__doc__)
    add = parser.add_argument
    add_out_arg(parser, 'bench_feature_store.json')
    add('--keep', action='store_true',
        help='keep the temporary directory (printed) with the sweeps\' work '
        'dirs and count logs')
    add('--data-seed', type=int, default=0,
        help='seed of the random weights and the generated images')
    add('--threads', type=int, default=1,
        help='CPU threads of each cell process (OMP_NUM_THREADS, '
        'MKL_NUM_THREADS); 0 keeps torch\'s default')
    add('--timeout', type=float, default=3600,
        help='seconds allowed for one tools/sweep.py invocation')
    model = add_model_args(
        parser, 'model (random open_clip ViT, 224 px)', width=64, layers=2,
        embed_dim=32, patch_help='patch size of the vision transformer',
        embed_help='dimension of the CLIP embedding')
    model.add_argument('--clip-logit-scale', type=float, default=1.0,
                       help='model.head.clip_logit_scale (the random text '
                       'tower\'s zero-shot logits are noise; at 100 they '
                       'swamp the cache term)')
    data = parser.add_argument_group('data (generated JPEGs in class folders)')
    data.add_argument('--num-classes', type=int, default=4, help='classes')
    data.add_argument('--train-per-class', type=int, default=16,
                      help='images per class in train/ (the shots are drawn '
                      'from them, by seed)')
    data.add_argument('--val-per-class', type=int, default=6,
                      help='images per class in val/')
    data.add_argument('--test-per-class', type=int, default=10,
                      help='images per class in test/')
    data.add_argument('--image-size', type=int, nargs=2, default=(96, 72),
                      metavar=('W', 'H'), help='size of generated images')
    sweep = parser.add_argument_group('sweep (same for both modes)')
    sweep.add_argument('--shots', type=int, nargs='+', default=[1, 2],
                       help='tools/sweep.py --shots')
    sweep.add_argument('--seeds', type=int, nargs='+', default=[1, 2],
                       help='tools/sweep.py --seeds')
    sweep.add_argument('--epochs', type=int, default=20,
                       help='Tip-Adapter-F epochs (train_cfg.max_epochs)')
    sweep.add_argument('--global-batch-size', type=int, default=16,
                       help='Tip-Adapter-F train_cfg.global_batch_size')
    sweep.add_argument('--augment-epoch', type=int, default=10,
                       help='few_shot_cfg.augment_epoch (views per few-shot '
                       'image)')
    sweep.add_argument('--batch-size', type=int, default=32,
                       help='batch size of the few-shot, val and test loaders')
    return parser.parse_args(argv)


def machine_info() -> dict:
    """CPU model, core count and library versions."""
    import mmengine
    import open_clip
    import torch
    return dict(cpu=cpu_model(), cores=os.cpu_count(), torch=torch.__version__,
                mmengine=mmengine.__version__,
                open_clip=open_clip.__version__,
                python=platform.python_version())


# -- data ---------------------------------------------------------------------
def noisy_image(rng: np.random.Generator, mean: np.ndarray,
                size: Sequence[int]) -> Image.Image:
    """The class colour, jittered per image, over a smooth random colour
    field, with per-pixel noise."""
    w, h = size
    coarse = rng.uniform(-1, 1, (4, 4, 3)).astype(np.float32)
    field = np.stack([
        np.asarray(Image.fromarray(coarse[..., c]).resize((w, h),
                                                          Image.BICUBIC))
        for c in range(3)], axis=-1)
    img = (mean + rng.normal(0, 15, 3) + 60 * field
           + rng.normal(0, 25, (h, w, 3)))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def generate_dataset(root: str, args: argparse.Namespace) -> Dict[str, int]:
    """``root/{train,val,test}/<class>/*.jpg``; returns the split sizes."""
    rng = np.random.default_rng(args.data_seed)
    means = np.clip(rng.normal(128, 40, (args.num_classes, 3)), 40, 215)
    sizes = dict(train=args.train_per_class, val=args.val_per_class,
                 test=args.test_per_class)
    for split, count in sizes.items():
        for c, mean in enumerate(means):
            folder = osp.join(root, split, f'class_{c:02d}')
            os.makedirs(folder)
            for i in range(count):
                noisy_image(rng, mean, args.image_size).save(
                    osp.join(folder, f'{i:04d}.jpg'), quality=90)
    return {split: count * args.num_classes for split, count in sizes.items()}


# -- configs ------------------------------------------------------------------
def config_text(mode: str, schedule: str, clip: dict, data_root: str,
                count_file: str, args: argparse.Namespace) -> str:
    """A config inheriting the real ``configs/_base_`` files (model, folder
    few-shot data, ``schedule``, runtime) with the counting backbone, the
    generated data and the benchmark's sizes; ``mode`` 'before' adds the
    plain val/test loops."""
    bases = [osp.join(BASE, p) for p in (
        'models/tip_adapter_rn50.py', 'datasets/folder_fewshot.py',
        f'schedules/{schedule}.py', 'default_runtime.py')]
    trains = schedule == 'tip_adapter_f'
    lines = [
        f'_base_ = {bases!r}',
        f'custom_imports = dict(imports=[\'tip_adapter_mm\', '
        f'{PLUGIN_MODULE!r}],',
        '                      allow_failed_imports=False)',
        f'clip = {clip!r}',
        f'count_file = {count_file!r}',
        'model = dict(',
        '    backbone=dict(type=\'CountingOpenCLIPVisualBackbone\', '
        'count_file=count_file,',
        '                  **clip),',
        '    text_encoder=dict(clip),',
        f'    head=dict(num_classes={args.num_classes}, topk=(1, ), '
        f'train_cache_keys={trains},',
        f'              clip_logit_scale={args.clip_logit_scale}))',
        f'data_root = {data_root!r}',
        f'loader = dict(batch_size={args.batch_size}, num_workers=0, '
        'persistent_workers=False)',
        'fewshot_dataloader = dict(**loader, dataset=dict(',
        '    dataset=dict(data_root=data_root)))',
        'val_dataloader = dict(**loader, dataset=dict(data_root=data_root))',
        'test_dataloader = dict(**loader, dataset=dict(data_root=data_root))',
        f'few_shot_cfg = dict(augment_epoch={args.augment_epoch})',
        '# The schedule\'s hooks, plus the markers of the training epochs.',
        'custom_hooks = _base_.custom_hooks + [',
        '    dict(type=\'EncoderCountMarkerHook\', count_file=count_file)]',
    ]
    if trains:
        lines.append(f'train_cfg = dict(max_epochs={args.epochs}, '
                     f'global_batch_size={args.global_batch_size})')
    if mode == 'before':
        lines += [
            '# Before the feature store: MMEngine\'s plain loops, which '
            'encode the',
            '# val/test images every time they run.',
            'val_cfg = dict(_delete_=True)',
            'test_cfg = dict(_delete_=True)',
        ]
    return '\n'.join(lines) + '\n'


def write_configs(root: str, mode: str, clip: dict, data_root: str,
                  count_file: str,
                  args: argparse.Namespace) -> Dict[str, str]:
    """``<root>/<mode>/configs/<stem>.py`` for both methods."""
    folder = osp.join(root, mode, 'configs')
    os.makedirs(folder)
    configs = {}
    for stem, schedule in METHODS.items():
        configs[stem] = osp.join(folder, f'{stem}.py')
        with open(configs[stem], 'w') as f:
            f.write(config_text(mode, schedule, clip, data_root, count_file,
                                args))
    return configs


# -- fingerprints of the splits -----------------------------------------------
def split_fingerprints(config: str, split: str,
                       fingerprint) -> List[str]:
    """Fingerprints of the preprocessed images of ``split``, computed here:
    the dataset of the config's ``<split>_dataloader`` (its test pipeline),
    the classifier's data preprocessor on batches of the loader's size."""
    import tip_adapter_mm  # noqa: F401  (registers the package's modules)
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import init_default_scope

    from mmpretrain.registry import DATASETS
    from tip_adapter_mm.models import FeatureOrImageDataPreprocessor
    from tip_adapter_mm.models.classifiers.clip_few_shot import (CLIP_MEAN,
                                                                 CLIP_STD)
    init_default_scope('mmpretrain')
    cfg = Config.fromfile(config, import_custom_modules=False)
    if cfg.model.get('data_preprocessor') is not None:
        raise RuntimeError(f'{config} sets model.data_preprocessor; the '
                           'benchmark fingerprints with the classifier\'s '
                           'default one.')
    loader = cfg[f'{split}_dataloader']
    dataset = DATASETS.build(loader.dataset)
    preprocessor = FeatureOrImageDataPreprocessor(
        mean=CLIP_MEAN, std=CLIP_STD, to_rgb=True)
    prints = []
    for start in range(0, len(dataset), loader.batch_size):
        batch = pseudo_collate([
            dataset[i]
            for i in range(start, min(start + loader.batch_size,
                                      len(dataset)))])
        inputs = preprocessor(batch, False)['inputs']
        prints += [fingerprint(img) for img in inputs]
    if len(set(prints)) != len(prints):
        raise RuntimeError(f'Two {split} images have the same fingerprint.')
    return prints


def classify(count_file: str, test: Sequence[str],
             val: Sequence[str]) -> dict:
    """Count the encoded images of a count log by kind: test, val or other
    (the few-shot views), over the whole sweep and between the
    ``before_train`` and ``after_train`` marks."""
    test_set, val_set = set(test), set(val)
    total = dict(test=0, val=0, other=0)
    training = dict(test=0, val=0, other=0)
    per_test_image, marks = Counter(), Counter()
    in_training = False
    lines = []
    if osp.exists(count_file):
        with open(count_file) as f:
            lines = f.read().splitlines()
    for line in lines:
        if line.startswith('mark '):
            what = line.split()[1]
            marks[what] += 1
            in_training = what == 'before_train'
            continue
        kind = ('test' if line in test_set else
                'val' if line in val_set else 'other')
        total[kind] += 1
        if in_training:
            training[kind] += 1
        if kind == 'test':
            per_test_image[line] += 1
    return dict(
        test=total['test'], val=total['val'], views=total['other'],
        training=sum(training.values()), training_by_kind=training,
        total=sum(total.values()),
        test_images_seen=len(per_test_image),
        test_images_seen_once=sum(1 for n in per_test_image.values()
                                  if n == 1),
        marks=dict(marks))


def expected_counts(mode: str, sizes: Dict[str, int], tip_f_cells: int,
                    args: argparse.Namespace) -> dict:
    """Encoded images per kind as the two protocols predict them.

    ``after``: every test and val image once, the views of each (shots,
    seed) once. ``before``: the test images in every cell; the val images
    once per config's store (the search reads them from it) plus in every
    Tip-Adapter-F epoch (plain ValLoop); the views once per config.
    """
    configs = len(METHODS)
    views = (args.augment_epoch * args.num_classes * sum(set(args.shots))
             * len(set(args.seeds)))
    cells = configs * len(set(args.shots)) * len(set(args.seeds))
    if mode == 'after':
        return dict(test=sizes['test'], val=sizes['val'], views=views,
                    training=0)
    training = tip_f_cells * args.epochs * sizes['val']
    return dict(test=cells * sizes['test'],
                val=configs * sizes['val'] + training,
                views=configs * views, training=training)


# -- running ------------------------------------------------------------------
def run_sweep(configs: Sequence[str], work_dir: str, env: dict,
              args: argparse.Namespace) -> dict:
    """``tools/sweep.py CONFIGS --shots --seeds --work-dir``: wall time, CPU
    time of its process tree, and its output (in ``<work_dir>.log``)."""
    cmd = [sys.executable, SWEEP, *configs, '--shots',
           *map(str, args.shots), '--seeds', *map(str, args.seeds),
           '--work-dir', work_dir]
    log = f'{work_dir}.log'
    before = os.times()
    start = time.perf_counter()
    with open(log, 'w') as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT,
                              cwd=REPO, env=env, timeout=args.timeout)
    wall = time.perf_counter() - start
    after = os.times()
    with open(log) as f:
        output = f.read()
    if proc.returncode:
        raise RuntimeError(f'{" ".join(cmd)} failed ({proc.returncode}); '
                           f'last output:\n{output[-4000:]}')
    return dict(wall_s=wall,
                cpu_s=(after.children_user + after.children_system
                       - before.children_user - before.children_system),
                output=output)


def cell_results(work_dir: str) -> Dict[str, dict]:
    """``{'<stem> shots=K seed=S': sweep_result.json}`` of a sweep."""
    results = {}
    for stem in METHODS:
        folder = osp.join(work_dir, stem)
        if not osp.isdir(folder):
            continue
        for cell in sorted(os.listdir(folder)):
            path = osp.join(folder, cell, 'sweep_result.json')
            if osp.isfile(path):
                with open(path) as f:
                    result = json.load(f)
                results[f'{stem} shots={result["shots"]} '
                        f'seed={result["seed"]}'] = result
    return results


def run_mode(mode: str, configs: Dict[str, str], root: str, env: dict,
             args: argparse.Namespace) -> dict:
    """One mode's sweep(s): ``after`` one invocation for both configs,
    ``before`` one per config with its own work dir."""
    start, cpu_start = time.perf_counter(), cpu_seconds()
    if mode == 'after':
        groups = {osp.join(root, mode, 'sweep'): list(configs.values())}
    else:
        groups = {osp.join(root, mode, f'sweep_{stem}'): [config]
                  for stem, config in configs.items()}
    runs, cells = [], {}
    for work_dir, group in groups.items():
        run = run_sweep(group, work_dir, env, args)
        runs.append(dict(work_dir=work_dir, configs=group,
                         wall_s=run['wall_s'], cpu_s=run['cpu_s']))
        cells.update(cell_results(work_dir))
        print(f'{mode}: tools/sweep.py {" ".join(map(osp.basename, group))}'
              f' {run["wall_s"]:.1f} s', flush=True)
    wall = time.perf_counter() - start
    return dict(wall_s=wall, cpu_s=sum(r['cpu_s'] for r in runs),
                other_processes_cpu_share=other_cpu_share(cpu_start, wall),
                invocations=runs, cells=cells)


# -- report -------------------------------------------------------------------
def markdown_table(results: dict) -> str:
    """Both modes side by side, as Markdown."""
    before, after = results['modes']['before'], results['modes']['after']
    sizes = results['split_sizes']

    def ratio(a: float, b: float) -> str:
        return f'{a / b:.1f}x' if b else '-'

    def count(mode: dict, key: str, size: Optional[int] = None) -> str:
        n = mode['counts'][key]
        return f'{n} ({n / size:.1f}x)' if size else str(n)

    rows = [
        ('sweep wall time (s)', f"{before['wall_s']:.1f}",
         f"{after['wall_s']:.1f}", ratio(before['wall_s'], after['wall_s'])),
        ('sweep CPU time, all processes (s)', f"{before['cpu_s']:.1f}",
         f"{after['cpu_s']:.1f}", ratio(before['cpu_s'], after['cpu_s'])),
    ]
    for label, key, size in (
            (f"encoded test images (test set: {sizes['test']})", 'test',
             sizes['test']),
            (f"encoded val images (val set: {sizes['val']})", 'val',
             sizes['val']),
            ('encoded few-shot views', 'views', None),
            ('encoded during Tip-Adapter-F training epochs (train + val)',
             'training', None),
            ('encoded images in all', 'total', None)):
        rows.append((label, count(before, key, size), count(after, key, size),
                     ratio(before['counts'][key], after['counts'][key])))
    rows.append(('other processes\' CPU share',
                 f"{100 * before['other_processes_cpu_share']:.0f} %",
                 f"{100 * after['other_processes_cpu_share']:.0f} %", ''))
    cells = len(after['cells'])
    lines = [f'| sweep of {cells} cells | before | after | before / after |',
             '|---|---|---|---|']
    lines += [f'| {a} | {b} | {c} | {d} |' for a, b, c, d in rows]
    return '\n'.join(lines)


def check_lines(results: dict) -> List[str]:
    """Checks of the counts and of the cells' accuracies."""
    sizes = results['split_sizes']
    lines = []
    after = results['modes']['after']['counts']
    exact = (after['test'] == sizes['test']
             and after['test_images_seen_once'] == sizes['test']
             and after['val'] == sizes['val'] and after['training'] == 0)
    lines.append(
        f"after: every test and val image encoded exactly once, nothing "
        f"during training: {'yes' if exact else '**NO**'} (test "
        f"{after['test']} of {sizes['test']}, {after['test_images_seen_once']}"
        f" seen once; val {after['val']} of {sizes['val']}; training "
        f"{after['training']})")
    for mode in MODES:
        got = results['modes'][mode]['counts']
        want = results['modes'][mode]['expected']
        same = all(got[k] == v for k, v in want.items())
        detail = ', '.join(f'{k} {got[k]}/{v}' for k, v in want.items())
        lines.append(f"{mode}: counts as the protocol predicts: "
                     f"{'yes' if same else '**NO**'} (got/expected: {detail})")
    before = results['modes']['before']['cells']
    after_cells = results['modes']['after']['cells']
    differ = [name for name in after_cells
              if name not in before
              or before[name]['top1'] != after_cells[name]['top1']]
    lines.append(
        f"same test top-1 in every cell in both modes: "
        f"{'yes' if not differ else '**NO**: ' + ', '.join(differ)} "
        f"({len(after_cells)} cells)")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Build model, data and configs; run both modes; report."""
    args = parse_args(argv)
    root = tempfile.mkdtemp(prefix='bench_feature_store_')
    try:
        start, cpu_start = time.perf_counter(), cpu_seconds()
        clip = write_clip_model(root, args, model_name=MODEL_NAME,
                                seed=args.data_seed, text_width=32,
                                text_heads=2)
        data_root = osp.join(root, 'data')
        sizes = generate_dataset(data_root, args)
        plugin_dir = osp.join(root, 'plugin')
        os.makedirs(plugin_dir)
        with open(osp.join(plugin_dir, f'{PLUGIN_MODULE}.py'), 'w') as f:
            f.write(PLUGIN)
        env = dict(os.environ,
                   PYTHONPATH=os.pathsep.join(
                       p for p in (REPO, plugin_dir,
                                   os.environ.get('PYTHONPATH')) if p))
        if args.threads > 0:
            env.update(OMP_NUM_THREADS=str(args.threads),
                       MKL_NUM_THREADS=str(args.threads))
        configs = {
            mode: write_configs(root, mode, clip, data_root,
                                osp.join(root, mode, 'encoded.txt'), args)
            for mode in MODES
        }
        sys.path.insert(0, plugin_dir)
        from feature_store_bench_plugin import image_fingerprint
        test_prints = split_fingerprints(configs['after']['tip_bench'],
                                         'test', image_fingerprint)
        val_prints = split_fingerprints(configs['after']['tip_bench'],
                                        'val', image_fingerprint)
        # Untimed: load the libraries once, so that both modes start with
        # warm file caches.
        subprocess.run([sys.executable, '-c', 'import tip_adapter_mm'],
                       cwd=REPO, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tip_f_cells = len(set(args.shots)) * len(set(args.seeds))
        modes = {}
        for mode in MODES:
            modes[mode] = run_mode(mode, configs[mode], root, env, args)
            modes[mode]['counts'] = classify(
                osp.join(root, mode, 'encoded.txt'), test_prints,
                val_prints)
            modes[mode]['expected'] = expected_counts(mode, sizes,
                                                      tip_f_cells, args)
        with open(configs['before']['tip_f_bench']) as f:
            before_cfg = f.read()
        with open(configs['after']['tip_f_bench']) as f:
            after_cfg = f.read()
        total = time.perf_counter() - start
        machine = machine_info()
        machine['other_processes_cpu_share'] = other_cpu_share(cpu_start,
                                                               total)
    finally:
        if args.keep:
            print(f'Kept {root}')
        else:
            shutil.rmtree(root, ignore_errors=True)
    results = dict(machine=machine, args=vars(args), split_sizes=sizes,
                   modes=modes, total_seconds=total,
                   configs=dict(before_tip_f=before_cfg,
                                after_tip_f=after_cfg))
    print(f"\n{machine['cpu']}, {machine['cores']} cores, torch "
          f"{machine['torch']}, {args.threads or 'default'} thread(s) per "
          f"cell; other processes used "
          f"{100 * machine['other_processes_cpu_share']:.0f} % of the CPU "
          f"time during the run. Sweep: Tip-Adapter and Tip-Adapter-F "
          f"({args.epochs} epochs) x shots {args.shots} x seeds "
          f"{args.seeds}; {args.num_classes} classes, "
          f"{args.augment_epoch} views per few-shot image.\n")
    print(markdown_table(results))
    print()
    print('\n'.join(check_lines(results)))
    print(f'\nTotal {total:.0f} s')
    write_json(args.out, results)
    print(f'Wrote {args.out}')
    return results


if __name__ == '__main__':
    main()
