"""Run experiment configs over shots x seeds; tabulate and plot the results.

    python tools/sweep.py CONFIG [CONFIG ...] [--shots 1 2 4 8 16]
        [--seeds 1 2 3] [--work-dir work_dirs/sweep] [--gpus N]
        [--launcher {none,pytorch,slurm,mpi}] [--cfg-options k=v ...]
        [--dry-run]

Each CONFIG is one dataset and one method (e.g. configs/tip_imagenet_16shot.py
or configs/tip_f_imagenet_16shot.py). Every cell (config, shots, seed) runs
in its own process: ``tools/test.py`` for a training-free config,
``tools/train.py`` for one with ``train_cfg`` (``tools/dist_*.sh`` with
``--gpus N`` > 1), in ``<work-dir>/<config stem>/shots<K>_seed<S>``. All
cells share one feature store, ``<work-dir>/feature_cache``: the few-shot
views of a (dataset, shots, seed) are encoded once for every method, and the
validation and test images once per encoder for the whole sweep. A cell's
result is ``sweep_result.json`` in its directory; a cell that has one is
skipped, so an interrupted sweep resumes where it stopped.

Written to ``<work-dir>``: ``results.md`` and ``results.csv`` (mean, sample
std and count over seeds per dataset, method and shots, the paper's figure
beside it where there is one) and ``results.png`` (accuracy vs shots).
"""
import argparse
import csv
import glob
import json
import math
import os
import os.path as osp
import re
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from mmengine.config import Config, DictAction

TOOLS = osp.dirname(osp.abspath(__file__))

TIP = 'Tip-Adapter'
TIP_F = 'Tip-Adapter-F'
ZERO_SHOT = 'Zero-shot CLIP'

#: Backbone of the published figures below.
PAPER_BACKBONE = 'RN50'
#: Published top-1 (%), Tip-Adapter paper (arXiv 2207.09519), CLIP RN50,
#: keyed by (dataset, method, shots); zero-shot CLIP has shots 0.
PAPER: Dict[Tuple[str, str, int], float] = {
    ('imagenet', ZERO_SHOT, 0): 60.33,
    **{('imagenet', TIP, k): v for k, v in zip(
        (1, 2, 4, 8, 16), (60.70, 60.96, 60.98, 61.45, 62.03))},
    **{('imagenet', TIP_F, k): v for k, v in zip(
        (1, 2, 4, 8, 16), (61.32, 61.69, 62.52, 64.00, 65.51))},
    # Successors on the same cached features (docs/results_sources.md).
    ('imagenet', 'APE', 16): 63.42,
    ('imagenet', 'GDA', 16): 63.82,
}

#: Method prefixes of config file names (the dataset follows them).
METHOD_PREFIX = re.compile(r'^(tip_f|tip|gda|ape|ncm|zero_shot|cache_only_f|'
                           r'cache_only)_')
RESULT_FILE = 'sweep_result.json'
LOG_FILE = 'sweep_cell.log'
TEST_TOP1 = re.compile(r'Epoch\(test\).*?accuracy/top1: ([0-9.]+)')


@dataclass
class Experiment:
    """One config of the sweep: where it is, what it is, how to run it."""
    config: str
    stem: str
    dataset: str
    method: str
    trains: bool
    reencode: bool
    backbone: Optional[str]


@dataclass
class Cell:
    """One (config, shots, seed) run."""
    experiment: Experiment
    shots: int
    seed: int
    work_dir: str
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def result_path(self) -> str:
        return osp.join(self.work_dir, RESULT_FILE)

    @property
    def name(self) -> str:
        return f'{self.experiment.stem} shots={self.shots} seed={self.seed}'


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line (``argv``: defaults to ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(
        description='Run configs over shots x seeds (one process per cell, '
        'features cached per config, resumable) and write results.md, '
        'results.csv and results.png.')
    parser.add_argument(
        'configs', nargs='+', metavar='CONFIG',
        help='experiment configs, one dataset and one method each; the '
        'table names them by file name: tip_<dataset>_<K>shot[_<variant>].py'
        ' is Tip-Adapter, tip_f_... Tip-Adapter-F (any config with '
        'train_cfg)')
    parser.add_argument(
        '--shots', nargs='+', type=int, default=[1, 2, 4, 8, 16],
        help='shots per class (default: 1 2 4 8 16)')
    parser.add_argument(
        '--seeds', nargs='+', type=int, default=[1, 2, 3],
        help='seeds of the few-shot draw and of the cache augmentations '
        '(default: 1 2 3)')
    parser.add_argument(
        '--work-dir', default='work_dirs/sweep',
        help='root of the cell directories, feature caches and results '
        '(default: work_dirs/sweep)')
    parser.add_argument(
        '--gpus', type=int, default=1,
        help='processes per cell; > 1 runs tools/dist_test.sh or '
        'tools/dist_train.sh (default: 1)')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='passed to tools/test.py / tools/train.py when --gpus is 1')
    parser.add_argument(
        '--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
        help='passed to every cell; the keys the sweep sets itself (shots, '
        'seed, few_shot_cfg.feature_dir) are refused')
    parser.add_argument(
        '--dry-run', action='store_true',
        help='print the commands of the cells still to run, run nothing')
    args = parser.parse_args(argv)
    if any(k < 1 for k in args.shots):
        parser.error(f'--shots must be >= 1, got {args.shots}')
    if args.gpus < 1:
        parser.error(f'--gpus must be >= 1, got {args.gpus}')
    return args


def parse_cfg_options(options: Sequence[str]) -> Dict[str, Any]:
    """``KEY=VALUE`` strings as MMEngine's ``--cfg-options`` parses them."""
    namespace = argparse.Namespace()
    DictAction(option_strings=[], dest='options')(None, namespace,
                                                  list(options))
    return getattr(namespace, 'options', None) or {}


def method_name(head_type: str, trains: bool) -> str:
    """The table name of a head class (its ``method_name``), with ``-F``
    when the config trains it (Tip-Adapter-F)."""
    import tip_adapter_mm  # noqa: F401  (registers the heads)
    from mmpretrain.registry import MODELS
    head_cls = MODELS.get(head_type)
    name = getattr(head_cls, 'method_name', '') or head_type
    return f'{name}-F' if trains else name


def names_from_stem(stem: str, method: str,
                    dataset: Optional[str] = None) -> Tuple[str, str]:
    """``(dataset, method)`` of a config.

    ``<method>_<dataset>_<K>shot[_<variant>]``: a variant after the shots is
    added to the method in brackets, e.g. ``Tip-Adapter-F (reencode)``. The
    dataset is the config's ``dataset_name`` (set by the dataset bases), or
    the part of the stem between a known method prefix and ``_<K>shot``.
    """
    name = METHOD_PREFIX.sub('', stem)
    match = re.match(r'^(.*?)_\d+shots?(?:_(.+))?$', name)
    if match:
        name, variant = match.group(1), match.group(2)
        if variant:
            method = f'{method} ({variant})'
    return dataset or name, method


def load_experiment(path: str, cfg_options: Dict[str, Any]) -> Experiment:
    """Read a config (with the sweep's ``--cfg-options``) and check that the
    sweep can drive it.

    Raises:
        ValueError: the config does not run on :class:`FewShotRunner` (whose
            ``few_shot_cfg.feature_dir`` the sweep sets) or has no few-shot
            loader.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'Config file {path!r} not found.')
    cfg = Config.fromfile(path, import_custom_modules=False)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if cfg.get('runner_type') != 'FewShotRunner':
        raise ValueError(
            f"{path}: runner_type must be 'FewShotRunner' (the sweep shares "
            'its feature store across cells), found '
            f'{cfg.get("runner_type")!r}.')
    if not (cfg.get('fewshot_dataloader') or {}).get('dataset'):
        raise ValueError(f'{path}: no fewshot_dataloader.dataset to set the '
                         'shots and seed of.')
    trains = cfg.get('train_cfg') is not None
    train_set = (cfg.get('train_dataloader') or {}).get('dataset') or {}
    stem = osp.splitext(osp.basename(path))[0]
    head = (cfg.get('model') or {}).get('head') or {}
    dataset, method = names_from_stem(
        stem, method_name(str(head.get('type', 'TipAdapterHead')), trains),
        cfg.get('dataset_name'))
    return Experiment(
        config=path, stem=stem, dataset=dataset, method=method,
        trains=trains,
        reencode=trains and train_set.get('type') == 'FewShotDataset',
        backbone=backbone_name((cfg.get('model') or {}).get('backbone')))


def backbone_name(backbone: Any) -> Optional[str]:
    """open_clip's model name, else the MMPretrain type (and depth)."""
    backbone = backbone or {}
    if backbone.get('model_name'):
        return backbone['model_name']
    kind = backbone.get('type')
    if not isinstance(kind, str):
        return None
    return f"{kind}-{backbone['depth']}" if 'depth' in backbone else kind


def check_experiments(experiments: Sequence[Experiment]) -> None:
    """Refuse two configs that would share a directory or a table row."""
    stems: Dict[str, str] = {}
    rows: Dict[Tuple[str, str], str] = {}
    for exp in experiments:
        row = (exp.dataset, exp.method)
        for seen, key, what in ((stems, exp.stem, 'a work directory'),
                                (rows, row, 'a table row')):
            if key in seen:
                raise ValueError(f'{seen[key]} and {exp.config} would share '
                                 f'{what} ({key}); rename one.')
            seen[key] = exp.config


def check_user_options(options: Dict[str, Any],
                       experiment: Experiment) -> None:
    """Refuse ``--cfg-options`` keys the sweep sets per cell."""
    owned = set(sweep_options(experiment, 1, 1, ''))
    clash = sorted(owned & set(options))
    if clash:
        raise ValueError(f'--cfg-options {clash}: the sweep sets these per '
                         'cell; use --shots, --seeds or --work-dir.')


def sweep_options(experiment: Experiment, shots: int, seed: int,
                  feature_dir: str) -> Dict[str, Any]:
    """The ``--cfg-options`` that make a cell of ``experiment``."""
    options: Dict[str, Any] = {
        'fewshot_dataloader.dataset.num_shots': shots,
        'fewshot_dataloader.dataset.seed': seed,
        'few_shot_cfg.feature_dir': feature_dir,
    }
    if experiment.reencode:
        options['train_dataloader.dataset.num_shots'] = shots
        options['train_dataloader.dataset.seed'] = seed
    return options


def make_cells(experiments: Sequence[Experiment], shots: Sequence[int],
               seeds: Sequence[int], work_dir: str) -> List[Cell]:
    """The grid, config-major, then shots, then seeds; one feature store
    for all."""
    feature_dir = osp.join(work_dir, 'feature_cache')
    cells = []
    for exp in experiments:
        root = osp.join(work_dir, exp.stem)
        for k in shots:
            for s in seeds:
                cells.append(Cell(exp, k, s,
                                  osp.join(root, f'shots{k}_seed{s}'),
                                  sweep_options(exp, k, s, feature_dir)))
    return cells


def cell_command(cell: Cell, args: argparse.Namespace) -> List[str]:
    """The command line of one cell."""
    exp = cell.experiment
    options = [f'{k}={v}' for k, v in cell.extra.items()]
    options += list(args.cfg_options)
    if args.gpus > 1:
        script = 'dist_train.sh' if exp.trains else 'dist_test.sh'
        head = ['bash', osp.join(TOOLS, script), exp.config, str(args.gpus)]
    else:
        script = 'train.py' if exp.trains else 'test.py'
        head = [sys.executable, osp.join(TOOLS, script), exp.config,
                '--launcher', args.launcher]
    return head + ['--work-dir', cell.work_dir, '--cfg-options', *options]


def read_result(path: str) -> Optional[Dict[str, Any]]:
    """A cell's saved result, or None if missing or unreadable."""
    try:
        with open(path) as f:
            result = json.load(f)
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and 'top1' in result else None


def write_json_atomic(path: str, data: Dict[str, Any]) -> None:
    """Write ``data`` to a temporary file and rename it over ``path``."""
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def parse_test_top1(output: str) -> Optional[float]:
    """The top-1 of the last ``Epoch(test)`` line of a run's output."""
    found = TEST_TOP1.findall(output)
    return float(found[-1]) if found else None


def search_best(work_dir: str, since: float) -> Optional[Dict[str, Any]]:
    """Best point of the newest search report written in ``work_dir`` since
    ``since`` (``<timestamp>/hyperparameter_search.json``)."""
    reports = [p for p in glob.glob(
        osp.join(work_dir, '*', 'hyperparameter_search.json'))
        if osp.getmtime(p) >= since]
    if not reports:
        return None
    with open(max(reports, key=osp.getmtime)) as f:
        report = json.load(f)
    return dict(best=report.get('best'), top1=report.get('accuracy'),
                num_samples=report.get('num_samples'))


def tail(text: str, chars: int = 4000) -> str:
    """The last ``chars`` characters of ``text``."""
    return text if len(text) <= chars else '...' + text[-chars:]


def run_cell(cell: Cell, command: List[str],
             cfg_options: Sequence[str] = ()) -> Optional[Dict[str, Any]]:
    """Run a cell, log its output to ``sweep_cell.log``, save and return its
    result; None (after printing the output tail) if it failed."""
    os.makedirs(cell.work_dir, exist_ok=True)
    log_path = osp.join(cell.work_dir, LOG_FILE)
    start = time.time()
    with open(log_path, 'w') as log:
        proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    with open(log_path, errors='replace') as f:
        output = f.read()
    top1 = parse_test_top1(output)
    if proc.returncode != 0 or top1 is None:
        why = (f'exit status {proc.returncode}' if proc.returncode else
               'no "Epoch(test) ... accuracy/top1" line in its output')
        print(f'FAILED {cell.name} ({why}). Output tail:\n'
              f'{tail(output)}\nCommand: {shlex.join(command)}\n'
              f'Full log: {log_path}', flush=True)
        return None
    exp = cell.experiment
    result = dict(
        config=exp.config, stem=exp.stem, dataset=exp.dataset,
        method=exp.method, shots=cell.shots, seed=cell.seed, top1=top1,
        search=search_best(cell.work_dir, start - 1),
        cfg_options=list(cfg_options),
        seconds=round(time.time() - start, 1), command=command)
    write_json_atomic(cell.result_path, result)
    return result


def run_sweep(cells: Sequence[Cell], args: argparse.Namespace) -> List[Cell]:
    """Run the cells without a result; return those that failed."""
    failed = []
    for i, cell in enumerate(cells, 1):
        prefix = f'[{i}/{len(cells)}] {cell.name}:'
        done = read_result(cell.result_path)
        if done is not None:
            print(f'{prefix} skip (done, top-1 {done["top1"]:.2f})',
                  flush=True)
            if done.get('cfg_options', []) != list(args.cfg_options):
                print(f'{prefix} warning: it was run with --cfg-options '
                      f'{done.get("cfg_options")}, not {args.cfg_options}; '
                      f'delete {cell.work_dir} to run it again.', flush=True)
            continue
        command = cell_command(cell, args)
        if args.dry_run:
            print(f'{prefix} would run {shlex.join(command)}', flush=True)
            continue
        print(f'{prefix} run', flush=True)
        result = run_cell(cell, command, args.cfg_options)
        if result is None:
            failed.append(cell)
        else:
            print(f'{prefix} top-1 {result["top1"]:.2f} '
                  f'({result["seconds"]:.0f} s)', flush=True)
    return failed


@dataclass
class Stat:
    """Mean, sample std (ddof=1; None below 2 values) and count."""
    mean: float
    std: Optional[float]
    n: int


def summarise(values: Sequence[float]) -> Stat:
    """:class:`Stat` of the top-1 values of one cell's seeds."""
    std = statistics.stdev(values) if len(values) > 1 else None
    return Stat(statistics.fmean(values), std, len(values))


def collect(cells: Sequence[Cell]) -> Dict[Tuple[str, str], Dict[int, Stat]]:
    """``{(dataset, method): {shots: Stat}}`` over the seeds with a result,
    rows in the order of the configs."""
    values: Dict[Tuple[str, str], Dict[int, List[float]]] = {}
    for cell in cells:
        row = values.setdefault(
            (cell.experiment.dataset, cell.experiment.method), {})
        result = read_result(cell.result_path)
        if result is not None:
            row.setdefault(cell.shots, []).append(float(result['top1']))
    return {row: {k: summarise(v) for k, v in by_shots.items()}
            for row, by_shots in values.items()}


def base_method(method: str) -> str:
    """The method without a config variant: 'Tip-Adapter-F (reencode)' ->
    'Tip-Adapter-F'."""
    return method.split(' (')[0]


def paper_figure(dataset: str, method: str, shots: int,
                 backbone: Optional[str]) -> Optional[float]:
    """The published figure for a cell, if the paper has one for it."""
    if backbone != PAPER_BACKBONE:
        return None
    return PAPER.get((dataset.lower(), base_method(method), shots))


def format_cell(stat: Optional[Stat], paper: Optional[float]) -> str:
    """``mean ± std (n)`` [``, paper P``]; '-' without a result."""
    text = '-'
    if stat is not None:
        std = f'{stat.std:.2f}' if stat.std is not None else 'n/a'
        text = f'{stat.mean:.2f} ± {std} ({stat.n})'
    if paper is not None:
        text += f' [paper {paper:.2f}]'
    return text


def write_tables(table: Dict[Tuple[str, str], Dict[int, Stat]],
                 shots: Sequence[int], backbones: Dict[Tuple[str, str], Any],
                 work_dir: str) -> Tuple[str, str]:
    """``results.md`` and ``results.csv`` under ``work_dir``."""
    md_path = osp.join(work_dir, 'results.md')
    csv_path = osp.join(work_dir, 'results.csv')
    lines = [
        '| dataset | method | ' + ' | '.join(f'{k} shot' for k in shots)
        + ' |', '|---|---|' + '---|' * len(shots)
    ]
    rows = []
    for (dataset, method), stats in table.items():
        backbone = backbones.get((dataset, method))
        papers = [paper_figure(dataset, method, k, backbone) for k in shots]
        lines.append(f'| {dataset} | {method} | ' + ' | '.join(
            format_cell(stats.get(k), p) for k, p in zip(shots, papers))
            + ' |')
        row: Dict[str, Any] = dict(dataset=dataset, method=method)
        for k, p in zip(shots, papers):
            stat = stats.get(k)
            row[f'{k}shot_mean'] = '' if stat is None else round(stat.mean, 4)
            row[f'{k}shot_std'] = ('' if stat is None or stat.std is None
                                   else round(stat.std, 4))
            row[f'{k}shot_n'] = 0 if stat is None else stat.n
            row[f'{k}shot_paper'] = '' if p is None else p
        rows.append(row)
    zero_shot = sorted({(d, PAPER[(d.lower(), ZERO_SHOT, 0)])
                        for (d, m), b in backbones.items()
                        if b == PAPER_BACKBONE
                        and (d.lower(), ZERO_SHOT, 0) in PAPER})
    lines += ['', 'Top-1 (%) on the test split: mean ± sample std (ddof=1) '
              '(number of seeds); [paper X]: Tip-Adapter paper '
              f'(arXiv 2207.09519), CLIP {PAPER_BACKBONE}, alpha/beta '
              'searched on test.']
    lines += [f'Paper zero-shot CLIP on {d}: {v:.2f}.' for d, v in zero_shot]
    with open(md_path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    fields = ['dataset', 'method'] + [
        f'{k}shot_{c}' for k in shots for c in ('mean', 'std', 'n', 'paper')
    ]
    with open(csv_path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return md_path, csv_path


def plot(table: Dict[Tuple[str, str], Dict[int, Stat]],
         shots: Sequence[int], backbones: Dict[Tuple[str, str], Any],
         path: str) -> str:
    """``results.png``: top-1 vs shots (log2), a subplot per dataset, a line
    with std error bars per method, paper figures dashed."""
    from matplotlib.figure import Figure
    datasets = list(dict.fromkeys(d for d, _ in table))
    cols = min(3, len(datasets))
    nrows = math.ceil(len(datasets) / cols)
    fig = Figure(figsize=(5 * cols, 4 * nrows))
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    methods = list(dict.fromkeys(m for _, m in table))
    for ax, dataset in zip(axes, datasets):
        for (d, method), stats in table.items():
            if d != dataset:
                continue
            colour = f'C{methods.index(method) % 10}'
            ks = [k for k in shots if k in stats]
            if ks:
                ax.errorbar(ks, [stats[k].mean for k in ks],
                            yerr=[stats[k].std or 0.0 for k in ks],
                            color=colour, marker='o', capsize=3,
                            label=method)
            backbone = backbones.get((d, method))
            paper = [(k, paper_figure(d, method, k, backbone))
                     for k in shots]
            paper = [(k, p) for k, p in paper if p is not None]
            if paper:
                ax.plot(*zip(*paper), color=colour, linestyle='--',
                        marker='x', label=f'{method} (paper)')
        zero = PAPER.get((dataset.lower(), ZERO_SHOT, 0))
        if zero is not None and PAPER_BACKBONE in {
                b for (d, _), b in backbones.items() if d == dataset}:
            ax.axhline(zero, color='grey', linestyle=':',
                       label=f'{ZERO_SHOT} (paper)')
        ax.set_xscale('log', base=2)
        ax.minorticks_off()
        ax.set_xticks(list(shots), [str(k) for k in shots])
        ax.set_xlabel('shots per class')
        ax.set_ylabel('top-1 (%)')
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
        ax.legend(fontsize='small')
    for ax in axes[len(datasets):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the sweep, write the tables and the plot; 1 if a cell failed."""
    args = parse_args(argv)
    user_options = parse_cfg_options(args.cfg_options)
    experiments = [load_experiment(c, user_options) for c in args.configs]
    check_experiments(experiments)
    for exp in experiments:
        check_user_options(user_options, exp)
    shots = list(dict.fromkeys(args.shots))
    seeds = list(dict.fromkeys(args.seeds))
    cells = make_cells(experiments, shots, seeds, args.work_dir)
    print(f'Sweep: {len(experiments)} configs x {len(shots)} shots x '
          f'{len(seeds)} seeds = {len(cells)} cells in {args.work_dir}',
          flush=True)
    failed = run_sweep(cells, args)
    if args.dry_run:
        return 0
    os.makedirs(args.work_dir, exist_ok=True)
    table = collect(cells)
    backbones = {(e.dataset, e.method): e.backbone for e in experiments}
    paths = write_tables(table, shots, backbones, args.work_dir)
    if any(table.values()):
        paths += (plot(table, shots, backbones,
                       osp.join(args.work_dir, 'results.png')), )
    print('Wrote ' + ', '.join(paths), flush=True)
    if failed:
        print(f'{len(failed)} of {len(cells)} cells failed: '
              + '; '.join(c.name for c in failed), flush=True)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
