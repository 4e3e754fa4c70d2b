"""Benchmark Tip-Adapter-F's two training paths: cached views vs re-encoding.

Everything is built in a temporary directory: an open_clip model with random
weights (size from the arguments) and generated JPEGs in class folders
(``train/``, ``val/``, ``test/``). Two configs inherit the real
``configs/_base_`` files (model, folder few-shot data, the Tip-Adapter-F
schedule, runtime) with the tiny model swapped in:

* ``fast``: the default schedule, ``FewShotRunner`` training on
  ``CachedViewsDataset`` (the features of the ``augment_epoch`` views
  encoded for the cache) with ``ViewCyclingSampler``: no encoder work while
  training.
* ``reencode``: as ``configs/tip_f_imagenet_16shot_reencode.py``, the
  few-shot image set with the train pipeline and a shuffling
  ``DefaultSampler``: a fresh augmentation of every image is decoded and
  encoded at every iteration.

Both use the same seeds, epochs (``train_cfg.max_epochs``), batch size
(``train_cfg.global_batch_size``) and ``few_shot_cfg.augment_epoch``; the
schedule's hooks (``BuildCacheHook``, ``HyperparameterSearchHook`` on val)
and stored-feature val/test loops are the real ones. Each run
is ``tools/train.py`` in a subprocess with its own work dir and
``--threads`` CPU threads. The training time is the train loop's own time:
MMEngine's ``IterTimerHook`` times every iteration (data loading included)
and the configs log the mean of each epoch, so the one-time cache encoding,
the per-epoch validation, checkpointing and the final search and test are
not counted (see benchmarks/README.md). Peak memory is the peak RSS of the
training process (``os.wait4``). Accuracies: the test top-1 that
``tools/train.py`` prints after training, and the val top-1 of the final
alpha/beta search. Several ``--seeds`` (the few-shot draw and the runner
seed) give mean and std.

Usage (the defaults take about 2 minutes on a 2-core CPU)::

    python benchmarks/bench_tip_adapter_f.py
    python benchmarks/bench_tip_adapter_f.py --seeds 1 2 3 4 5 --epochs 20 \
        --vision-width 256 --vision-layers 4 --threads 0
"""
import argparse
import json
import math
import os
import os.path as osp
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
from common import (REPO, add_model_args, add_out_arg, cpu_model, new_parser,
                    write_clip_model, write_json)
from PIL import Image

BASE = osp.join(REPO, 'configs', '_base_')
TRAIN = osp.join(REPO, 'tools', 'train.py')
MODEL_NAME = 'TipFBench-ViT'
PATHS = ('fast', 'reencode')
#: Logged at the end of every train epoch: its mean iteration time.
EPOCH_TIME = 'time_epoch_mean'
#: Log lines parsed from the output of tools/train.py.
SEARCH_RE = re.compile(r'Hyperparameter search on val .*top-1 ([\d.]+)%')
TEST_RE = re.compile(r'Epoch\(test\).*accuracy/top1: ([\d.]+)')
BEST_RE = re.compile(r'Loading the best epoch on validation: .*epoch_(\d+)')


# -- arguments and machine ----------------------------------------------------
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = new_parser(__doc__)
    add = parser.add_argument
    add('--seeds', type=int, nargs='+', default=[1, 2, 3],
        help='few-shot seeds (fewshot_dataloader.dataset.seed, and the '
        'runner seed); one run per path and seed')
    add_out_arg(parser, 'bench_tip_adapter_f.json')
    add('--keep', action='store_true',
        help='keep the temporary directory (printed) with data and work dirs')
    add('--data-seed', type=int, default=0,
        help='seed of the random weights and the generated images')
    model = add_model_args(
        parser, 'model (random open_clip ViT, 224 px)', width=128, layers=2,
        embed_dim=64, patch_help='patch size of the vision transformer',
        embed_help='dimension of the CLIP embedding')
    model.add_argument('--clip-logit-scale', type=float, default=1.0,
                       help='model.head.clip_logit_scale. The random text '
                       'tower makes the zero-shot logits noise; at CLIP\'s '
                       '100 they swamp the cache logits (alpha <= 3 in the '
                       'search) and every run ends near chance')
    data = parser.add_argument_group('data (generated JPEGs in class folders)')
    data.add_argument('--num-classes', type=int, default=8,
                      help='classes')
    data.add_argument('--shots', type=int, default=8,
                      help='few-shot images per class')
    data.add_argument('--train-per-class', type=int, default=16,
                      help='images per class in train/ (the shots are '
                      'drawn from them, by seed)')
    data.add_argument('--val-per-class', type=int, default=12,
                      help='images per class in val/ (best epoch, search)')
    data.add_argument('--test-per-class', type=int, default=50,
                      help='images per class in test/')
    data.add_argument('--image-size', type=int, nargs=2, default=(96, 72),
                      metavar=('W', 'H'), help='size of generated images')
    data.add_argument('--colour-spread', type=float, default=40.0,
                      help='std of the class mean colours around grey')
    data.add_argument('--colour-jitter', type=float, default=15.0,
                      help='std of an image\'s colour around its class mean '
                      '(overlap between classes)')
    data.add_argument('--texture', type=float, default=60.0,
                      help='amplitude of a smooth random colour field, '
                      'independent of the class')
    data.add_argument('--pixel-noise', type=float, default=25.0,
                      help='std of per-pixel noise')
    train = parser.add_argument_group('training (same for both paths)')
    train.add_argument('--epochs', type=int, default=10,
                       help='fine-tuning epochs (train_cfg.max_epochs)')
    train.add_argument('--batch-size', type=int, default=16,
                       help='train_cfg.global_batch_size')
    train.add_argument('--augment-epoch', type=int, default=10,
                       help='augmented views encoded for the cache '
                       '(few_shot_cfg.augment_epoch)')
    train.add_argument('--num-workers', type=int, default=0,
                       help='dataloader workers of the re-encode train '
                       'loader (0: all work, hence the peak RSS, in the '
                       'training process)')
    train.add_argument('--threads', type=int, default=1,
                       help='CPU threads of each training process '
                       '(OMP_NUM_THREADS, MKL_NUM_THREADS); 0 keeps torch\'s '
                       'default. One thread keeps the timings stable on a '
                       'small machine shared with other work, where idle '
                       'torch threads waiting for busy cores can make a '
                       '2 ms step take 100+ ms')
    train.add_argument('--timeout', type=float, default=900,
                       help='seconds allowed for one tools/train.py run')
    return parser.parse_args(argv)


def machine_info() -> dict:
    """CPU model, core count and library versions."""
    import mmengine
    import open_clip
    import torch
    return dict(cpu=cpu_model(), cores=os.cpu_count(), torch=torch.__version__,
                torch_default_threads=torch.get_num_threads(),
                mmengine=mmengine.__version__,
                open_clip=open_clip.__version__,
                python=platform.python_version(),
                loadavg_1_5_15min_at_end=os.getloadavg())


# -- model and data -----------------------------------------------------------
def noisy_image(rng: np.random.Generator, mean: np.ndarray,
                args: argparse.Namespace) -> Image.Image:
    """The class colour, jittered per image, over a smooth random colour
    field (class-independent), with per-pixel noise."""
    w, h = args.image_size
    colour = mean + rng.normal(0, args.colour_jitter, 3)
    coarse = rng.uniform(-1, 1, (4, 4, 3)).astype(np.float32)
    field = np.stack([
        np.asarray(Image.fromarray(coarse[..., c]).resize((w, h),
                                                          Image.BICUBIC))
        for c in range(3)], axis=-1)
    img = (colour + args.texture * field
           + rng.normal(0, args.pixel_noise, (h, w, 3)))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def generate_dataset(root: str, args: argparse.Namespace) -> List[str]:
    """``root/{train,val,test}/<class>/*.jpg``; returns the class names.

    Class means are drawn around grey with ``--colour-spread``, so classes
    overlap once ``--colour-jitter``, texture and noise are added.
    """
    rng = np.random.default_rng(args.data_seed)
    classes = [f'class_{c:02d}' for c in range(args.num_classes)]
    means = np.clip(rng.normal(128, args.colour_spread,
                               (args.num_classes, 3)), 40, 215)
    sizes = dict(train=args.train_per_class, val=args.val_per_class,
                 test=args.test_per_class)
    for split, count in sizes.items():
        for name, mean in zip(classes, means):
            folder = osp.join(root, split, name)
            os.makedirs(folder)
            for i in range(count):
                noisy_image(rng, mean, args).save(
                    osp.join(folder, f'{i:04d}.jpg'), quality=90)
    return classes


# -- configs ------------------------------------------------------------------
def config_text(path: str, clip: dict, data_root: str,
                args: argparse.Namespace) -> str:
    """A config inheriting the real ``configs/_base_`` files, with the tiny
    model, the generated data and the benchmark's sizes; ``path`` is
    'fast' (the schedule's default train set) or 'reencode'."""
    bases = [osp.join(BASE, p) for p in (
        'models/tip_adapter_rn50.py', 'datasets/folder_fewshot.py',
        'schedules/tip_adapter_f.py', 'default_runtime.py')]
    lines = [
        f'_base_ = {bases!r}',
        f'clip = {clip!r}',
        'model = dict(backbone=dict(clip), text_encoder=dict(clip),',
        f'             head=dict(num_classes={args.num_classes}, '
        'train_cache_keys=True, topk=(1, ),',
        f'                       clip_logit_scale={args.clip_logit_scale}))',
        f'data_root = {data_root!r}',
        '# Loaders in the training process (num_workers=0): its peak RSS',
        '# covers all the work.',
        'fewshot_dataloader = dict(num_workers=0, dataset=dict(',
        f'    num_shots={args.shots}, dataset=dict(data_root=data_root)))',
        'val_dataloader = dict(num_workers=0, '
        'dataset=dict(data_root=data_root))',
        'test_dataloader = dict(num_workers=0, '
        'dataset=dict(data_root=data_root))',
        '# The cosine schedule follows train_cfg.max_epochs.',
        f'train_cfg = dict(max_epochs={args.epochs}, '
        f'global_batch_size={args.batch_size})',
        f'few_shot_cfg = dict(augment_epoch={args.augment_epoch})',
        '# Timing the train loop: one log at the end of every epoch, with '
        'the mean',
        '# of the iteration times of that epoch (IterTimerHook).',
        'default_hooks = dict(logger=dict(interval=1000000))',
        'log_processor = dict(custom_cfg=[dict(',
        f'    data_src=\'time\', log_name={EPOCH_TIME!r}, '
        'method_name=\'mean\',',
        '    window_size=\'epoch\')])',
    ]
    if path == 'reencode':
        lines += [
            '# As configs/tip_f_imagenet_16shot_reencode.py: the few-shot '
            'set (= fewshot_dataloader.dataset)',
            '# with the train pipeline, re-encoded at every iteration.',
            'train_dataloader = dict(',
            f'    num_workers={args.num_workers}, '
            f'persistent_workers={args.num_workers > 0},',
            '    sampler=dict(type=\'DefaultSampler\', shuffle=True),',
            '    dataset=dict(',
            '        _delete_=True, type=\'FewShotDataset\', '
            f'num_shots={args.shots}, seed=1,',
            '        dataset=dict(type=\'CustomDataset\', '
            'data_root=data_root, data_prefix=\'train\',',
            '                     pipeline={{_base_.train_pipeline}})))',
        ]
    return '\n'.join(lines) + '\n'


def write_configs(root: str, clip: dict, data_root: str,
                  args: argparse.Namespace) -> Dict[str, str]:
    """Write ``<root>/tip_f_bench_<path>.py`` for both paths."""
    configs = {}
    for path in PATHS:
        configs[path] = osp.join(root, f'tip_f_bench_{path}.py')
        with open(configs[path], 'w') as f:
            f.write(config_text(path, clip, data_root, args))
    return configs


def seed_options(path: str, seed: int) -> List[str]:
    """``--cfg-options`` of a seed. The re-encode train set is the few-shot
    set, whose seed must match (``FewShotRunner`` checks it)."""
    options = [f'fewshot_dataloader.dataset.seed={seed}',
               f'randomness.seed={seed}']
    if path == 'reencode':
        options.append(f'train_dataloader.dataset.seed={seed}')
    return options


# -- running and parsing ------------------------------------------------------
def run_train(config: str, work_dir: str, options: Sequence[str],
              threads: int, timeout: float) -> dict:
    """Run ``tools/train.py`` in a subprocess (``threads`` > 0: its CPU
    threads), its output going to ``<work_dir>/train_output.log``.

    Returns the process's wall time, CPU time and peak RSS in MiB (from
    ``os.wait4``), the 1-minute load average before it started (other work
    on the machine slows it down) and its output.
    """
    os.makedirs(work_dir)
    log = osp.join(work_dir, 'train_output.log')
    cmd = [sys.executable, TRAIN, config, '--work-dir', work_dir,
           '--cfg-options', *options]
    env = dict(os.environ)
    if threads > 0:
        env.update(OMP_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads))
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with open(log, 'w') as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                cwd=REPO, env=env)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    with open(log) as f:
        output = f.read()
    if proc.returncode:
        raise RuntimeError(f'{" ".join(cmd)} failed ({proc.returncode}); '
                           f'last output:\n{output[-3000:]}')
    return dict(wall_s=wall, cpu_s=usage.ru_utime + usage.ru_stime,
                peak_rss_mib=usage.ru_maxrss / 1024, load_before=load,
                output=output)


def train_epoch_times(work_dir: str) -> List[dict]:
    """Per epoch: iterations and mean iteration ``time`` of the train loop,
    from MMEngine's ``vis_data/scalars.json`` (one train entry, the one
    with a ``loss``, at the end of every epoch; see :func:`config_text`)."""
    files = [osp.join(work_dir, d, 'vis_data', 'scalars.json')
             for d in sorted(os.listdir(work_dir))]
    files = [f for f in files if osp.isfile(f)]
    if len(files) != 1:
        raise RuntimeError(f'Expected one scalars.json in {work_dir}, '
                           f'found {files}.')
    epochs, last_iter = [], 0
    with open(files[0]) as f:
        for line in f:
            entry = json.loads(line)
            if 'loss' in entry:
                epochs.append(dict(iterations=entry['iter'] - last_iter,
                                   mean_s=float(entry[EPOCH_TIME])))
                last_iter = entry['iter']
    return epochs


def last_match(pattern: re.Pattern, text: str, what: str) -> str:
    """The first group of the last match of ``pattern`` in ``text``."""
    found = pattern.findall(text)
    if not found:
        raise RuntimeError(f'No {what} line in the output of tools/train.py.')
    return found[-1]


def run_one(path: str, seed: int, config: str, work_dir: str,
            args: argparse.Namespace) -> dict:
    """Train one path with one seed and collect its measurements."""
    run = run_train(config, work_dir, seed_options(path, seed),
                    args.threads, args.timeout)
    epochs = train_epoch_times(work_dir)
    iterations = sum(e['iterations'] for e in epochs)
    per_epoch = math.ceil(args.num_classes * args.shots / args.batch_size)
    if len(epochs) != args.epochs or iterations != args.epochs * per_epoch:
        raise RuntimeError(
            f'{work_dir}: {len(epochs)} epochs of {iterations} iterations '
            f'logged, expected {args.epochs} of {per_epoch}.')
    output = run['output']
    return dict(
        path=path, seed=seed,
        train_s=sum(e['iterations'] * e['mean_s'] for e in epochs),
        iterations=iterations,
        median_iter_s=statistics.median(e['mean_s'] for e in epochs),
        wall_s=run['wall_s'], cpu_s=run['cpu_s'],
        peak_rss_mib=run['peak_rss_mib'],
        load_before=run['load_before'],
        best_epoch=int(last_match(BEST_RE, output, 'best-epoch')),
        val_top1=float(last_match(SEARCH_RE, output, 'search')),
        test_top1=float(last_match(TEST_RE, output, 'test accuracy')))


# -- summary ------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> Dict[str, float]:
    """Mean and sample std (0 for a single value)."""
    values = list(values)
    return dict(mean=statistics.fmean(values),
                std=statistics.stdev(values) if len(values) > 1 else 0.0)


def compare(fast: Sequence[float], reencode: Sequence[float]) -> dict:
    """Whether two paths' accuracies (one per seed) differ beyond the
    seed-to-seed noise: ``|mean difference| <= 2 * SE``, with
    ``SE = sqrt((std_fast^2 + std_reencode^2) / n)``. ``None`` with one
    seed. The paired differences (same seed: same shots, same cache) are
    given too."""
    n = len(fast)
    diffs = [r - f for f, r in zip(fast, reencode)]
    result = dict(mean_diff=statistics.fmean(diffs),
                  paired_std=statistics.stdev(diffs) if n > 1 else 0.0,
                  se=None, within_noise=None)
    if n > 1:
        result['se'] = math.sqrt((statistics.variance(fast)
                                  + statistics.variance(reencode)) / n)
        result['within_noise'] = abs(result['mean_diff']) <= 2 * result['se']
    return result


def summarize(runs: List[dict], num_test: int) -> dict:
    """Per-path mean/std of every measure, the training-time ratio and the
    accuracy comparisons."""
    keys = ('train_s', 'median_iter_s', 'wall_s', 'cpu_s', 'peak_rss_mib',
            'val_top1', 'test_top1')
    per_path = {
        path: {k: mean_std(r[k] for r in runs if r['path'] == path)
               for k in keys} for path in PATHS}
    by_seed = {(r['path'], r['seed']): r for r in runs}
    seeds = sorted({r['seed'] for r in runs})
    ratios = [by_seed['reencode', s]['train_s'] / by_seed['fast', s]['train_s']
              for s in seeds]
    summary = dict(per_path=per_path,
                   train_time_ratio_reencode_over_fast=mean_std(ratios))
    for split in ('val_top1', 'test_top1'):
        summary[f'{split}_comparison'] = compare(
            *[[by_seed[p, s][split] for s in seeds] for p in PATHS])
    p = per_path['fast']['test_top1']['mean'] / 100
    summary['test_binomial_std_pct'] = 100 * math.sqrt(p * (1 - p) / num_test)
    return summary


def fmt(stat: Dict[str, float], digits: int = 2) -> str:
    """``mean ± std``."""
    return f'{stat["mean"]:.{digits}f} ± {stat["std"]:.{digits}f}'


def markdown_table(summary: dict, num_seeds: int) -> str:
    """The per-path results as a Markdown table."""
    per = summary['per_path']
    ratio = summary['train_time_ratio_reencode_over_fast']
    rows = [
        ('training time (s)', 'train_s', 3),
        ('iteration, median of epoch means (ms)', 'median_iter_s', None),
        ('train.py wall time (s)', 'wall_s', 1),
        ('train.py CPU time (s)', 'cpu_s', 1),
        ('peak RSS (MiB)', 'peak_rss_mib', 0),
        ('val top-1, searched (%)', 'val_top1', 2),
        ('test top-1 (%)', 'test_top1', 2),
    ]
    lines = [f'| mean ± std over {num_seeds} seed(s) | fast (cached views) '
             '| re-encode | re-encode / fast |',
             '|---|---|---|---|']
    for label, key, digits in rows:
        if digits is None:  # seconds shown as milliseconds
            cells = [fmt({k: 1000 * v for k, v in per[p][key].items()}, 2)
                     for p in PATHS]
        else:
            cells = [fmt(per[p][key], digits) for p in PATHS]
        extra = fmt(ratio, 1) if key == 'train_s' else ''
        lines.append(f'| {label} | {cells[0]} | {cells[1]} | {extra} |')
    return '\n'.join(lines)


def noise_lines(summary: dict) -> str:
    """One line per split on whether the paths differ beyond noise."""
    lines = []
    for split in ('val_top1', 'test_top1'):
        c = summary[f'{split}_comparison']
        line = (f'{split}: re-encode - fast = {c["mean_diff"]:+.2f} points '
                f'(paired std {c["paired_std"]:.2f})')
        if c['se'] is None:
            line += '; one seed: no noise estimate (use --seeds 1 2 3)'
        else:
            verdict = 'within noise' if c['within_noise'] else 'BEYOND noise'
            line += f'; 2 x SE = {2 * c["se"]:.2f} -> {verdict}'
        lines.append(line)
    lines.append('test-set sampling std of one top-1 (binomial): '
                 f'{summary["test_binomial_std_pct"]:.2f} points')
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Build model and data, train both paths for every seed, report."""
    args = parse_args(argv)
    root = tempfile.mkdtemp(prefix='bench_tip_f_')
    try:
        clip = write_clip_model(root, args, model_name=MODEL_NAME,
                                seed=args.data_seed, text_width=32,
                                text_heads=2)
        generate_dataset(osp.join(root, 'data'), args)
        configs = write_configs(root, clip, osp.join(root, 'data'), args)
        runs = []
        for seed in args.seeds:
            for path in PATHS:
                work_dir = osp.join(root, 'work_dirs', f'{path}_seed{seed}')
                runs.append(run_one(path, seed, configs[path], work_dir,
                                    args))
                r = runs[-1]
                print(f'seed {seed} {path:8s}: train {r["train_s"]:.3f} s '
                      f'({r["iterations"]} it), wall {r["wall_s"]:.1f} s, '
                      f'peak RSS {r["peak_rss_mib"]:.0f} MiB, val '
                      f'{r["val_top1"]:.2f}, test {r["test_top1"]:.2f} '
                      f'(best epoch {r["best_epoch"]}, load before '
                      f'{r["load_before"]:.2f})',
                      flush=True)
        with open(configs['fast']) as f:
            fast_cfg = f.read()
        with open(configs['reencode']) as f:
            reencode_cfg = f.read()
    finally:
        if args.keep:
            print(f'Kept {root}')
        else:
            shutil.rmtree(root, ignore_errors=True)
    summary = summarize(runs, args.num_classes * args.test_per_class)
    machine = machine_info()
    print(f'\n{machine["cpu"]}, {machine["cores"]} cores, torch '
          f'{machine["torch"]}, {args.threads or "default"} thread(s) per '
          f'run, load average {machine["loadavg_1_5_15min_at_end"][0]:.2f}\n')
    print(markdown_table(summary, len(args.seeds)))
    print()
    print(noise_lines(summary))
    result = dict(machine=machine, args=vars(args), runs=runs,
                  summary=summary,
                  configs=dict(fast=fast_cfg, reencode=reencode_cfg))
    write_json(args.out, result)
    print(f'\nWrote {args.out}')
    return result


if __name__ == '__main__':
    main()
