"""Run experiment configs over shots x seeds x selection protocols; tabulate
and plot every result the work directory holds.

    python tools/sweep.py CONFIG [CONFIG ...] [--shots 1 2 4 8 16]
        [--seeds 1 2 3] [--protocols val fewshot_val kshot_val none]
        [--work-dir work_dirs/sweep] [--gpus N]
        [--launcher {none,pytorch,slurm,mpi}] [--cfg-options k=v ...]
        [--keep-models] [--dry-run]
        [--setting {few_shot,base_to_new,cross_dataset,domain_shift}]

Each CONFIG is one dataset and one method (e.g. configs/tip_imagenet_16shot.py
or configs/gda_dtd_16shot.py): the grid is methods x datasets (the configs)
x shots x seeds x protocols. Every cell runs in its own process:
``tools/test.py`` for a training-free config, ``tools/train.py`` for one with
``train_cfg`` (``tools/dist_*.sh`` with ``--gpus N`` > 1), in
``<work-dir>/<config stem>/shots<K>_seed<S>_<protocol>``, with
``few_shot_cfg.protocol=<protocol>`` (what selects the hyperparameters and
the epoch: docs/protocol.md). All cells share one feature store,
``<work-dir>/feature_cache``: the shots of a (dataset, K, seed) are the same
images, and their views the same stored entry, for every method and
protocol; the validation and test images are encoded once per encoder for
the whole sweep.

A cell's record is ``sweep_result.json`` in its directory: config, method,
dataset, backbone, shots, seed, protocol, test top-1, the head's
hyperparameters after the run (read from the adapted model the cell saved:
``tools/test.py --save-model`` or ``tools/train.py``'s
``final_searched.pth``), the selected epoch of a trained head, the support
views' feature-store entry, wall time. A cell that has one is skipped, so an
interrupted sweep resumes where it stopped.

Written to ``<work-dir>``, rebuilt from EVERY cell record under it (earlier
sweeps into the same directory included): ``results.md`` and ``results.csv``
(mean, sample std and count over seeds per dataset, backbone, method,
protocol and shots; an ``average`` row over the datasets present; the
published figure beside it with its source) and ``results.png`` (a panel per
dataset) plus ``results_<dataset>.png``: top-1 vs shots, one line per method
and protocol, std error bars. A table that would lose a row of the previous
one is kept as ``results.<time>.md/.csv`` first.

``--setting`` (docs/generalization.md; default ``few_shot``, the above):

- ``base_to_new``: the CONFIGs are ``<method>_<dataset>_base.py`` files
  (configs/generalization/base_to_new/). A cell runs its config (adapted
  and tested on the base classes), then ``tools/test.py`` of the
  ``<method>_<dataset>_new.py`` beside it with the model the cell tested
  (its ``final_searched.pth``, last ``epoch_N.pth`` or
  ``adapted_model.pth``): the new classes. The record holds ``base``,
  ``new`` and ``H`` (their harmonic mean); the table base / new / H per
  dataset and method, an average row (H of the average base and new
  accuracies, as CoCoOp's tables) and the published H beside it.
- ``cross_dataset`` / ``domain_shift``: the CONFIGs are ImageNet configs
  (e.g. configs/coop_imagenet_16shot.py); after the cell's own run, each
  target config ``<CONFIG dir>/generalization/cross_dataset/<stem>_to_*.py``
  (cross-dataset) or ``<CONFIG dir>/generalization/<stem>_to_*.py``
  (domain shift) is tested with the cell's model; the table has a column
  per target and their average.

These settings keep their cells and tables in ``<work-dir>/<setting>/``
(same guarantees: records rebuilt from every cell, nothing overwritten,
finished cells skipped) and share ``<work-dir>/feature_cache``.
"""
import argparse
import copy
import csv
import glob
import json
import math
import os
import os.path as osp
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from mmengine.config import Config, DictAction

from tip_adapter_mm.quiet import quiet_warnings

TOOLS = osp.dirname(osp.abspath(__file__))

TIP = 'Tip-Adapter'
TIP_F = 'Tip-Adapter-F'
ZERO_SHOT = 'Zero-shot CLIP'
CLIP_ADAPTER = 'CLIP-Adapter'

#: The selection protocols of ``few_shot_cfg.protocol`` (docs/protocol.md),
#: in table order; 'reference_test' selects on the test split (the public
#: reference code's protocol, not a valid estimate).
PROTOCOLS = ('val', 'fewshot_val', 'kshot_val', 'none', 'reference_test')

#: The 11 datasets of the few-shot CLIP benchmark (``dataset_name`` of the
#: dataset bases): the published averages are over these.
BENCHMARK_DATASETS = ('caltech101', 'dtd', 'eurosat', 'fgvc_aircraft',
                      'flowers102', 'food101', 'imagenet', 'oxford_pets',
                      'stanford_cars', 'sun397', 'ucf101')
#: Pseudo-dataset of the rows averaged over datasets.
AVERAGE = 'average'


class Source(NamedTuple):
    """Where published figures come from (docs/results_sources.md)."""
    citation: str
    protocol: str  # how the source selected hyperparameters / epochs


SOURCES: Dict[str, Source] = {
    'Tip paper': Source(
        'R. Zhang et al., Tip-Adapter, ECCV 2022, arXiv 2207.09519',
        'ImageNet: alpha/beta and the Tip-Adapter-F epoch chosen on test; '
        'rows of other methods as reported by the paper'),
    'Tip exp.log': Source(
        'exp.log of the official code, gaopengcuhk/Tip-Adapter (mean of '
        'the 16-shot entries of the 11 datasets)',
        'test on ImageNet, val elsewhere (Tip-Adapter-F epoch on test)'),
    'APE notebook': Source(
        'APE_results.ipynb of the official code, yangyangyang127/APE '
        '(X. Zhu et al., ICCV 2023, arXiv 2304.01195)',
        'test on ImageNet, val elsewhere'),
    'GDA logs': Source(
        'logs/ of the official code, mrflogs/ICLR24 (Z. Wang et al., '
        'ICLR 2024, arXiv 2402.04087)',
        'test on ImageNet, val elsewhere; mean of seeds 1, 2, 3'),
    'ProLIP paper': Source(
        'ProLIP, arXiv 2410.05270 (read from a figure; mean of 10 seeds)',
        'none (validation-free)'),
    'MaPLe README': Source(
        'README of the official code, muzairkhattak/multimodal-prompt-'
        'learning (M. U. Khattak et al., MaPLe, CVPR 2023, arXiv '
        '2210.03117, Table 1; VPT: its model zoo\'s "Deep Vision '
        'Prompting", vit_b16_c2_ep5_batch4_4): base-to-new averages over '
        'the 11 datasets, 3 seeds',
        "the methods' fixed recipes, last epoch"),
    'CLIP-SVD README': Source(
        'README of HealthX-Lab/CLIP-SVD (third-party table, 3 seeds)',
        'not stated'),
    'CLIP-LoRA paper': Source(
        'M. Zanella, I. Ben Ayed, CLIP-LoRA, CVPR Workshops 2024, arXiv '
        '2405.18541 (Table 1; ImageNet read from its figure)',
        'none (fixed recipe, last step)'),
}


class Published(NamedTuple):
    """A published top-1 (%) and the key of its source in
    :data:`SOURCES`."""
    top1: float
    source: str


def _figures(source: str, backbone: str, dataset: str, shots: int,
             figures: Dict[str, float]
             ) -> Dict[Tuple[str, str, str, int], Published]:
    return {(dataset, method, backbone, shots): Published(top1, source)
            for method, top1 in figures.items()}


#: Published top-1 (%), keyed by (dataset, method, backbone, shots):
#: method = the head's ``method_name`` (see :func:`method_name`), backbone =
#: open_clip's model name, ``average`` = the mean over the 11 benchmark
#: datasets, shots 0 = zero-shot CLIP (any shots). Sources and selection
#: protocols: :data:`SOURCES` and docs/results_sources.md.
PAPER: Dict[Tuple[str, str, str, int], Published] = {
    # ImageNet, RN50, by shots: Tip paper, Table 1.
    **{('imagenet', TIP, 'RN50', k): Published(v, 'Tip paper')
       for k, v in zip((1, 2, 4, 8, 16),
                       (60.70, 60.96, 60.98, 61.45, 62.03))},
    **{('imagenet', TIP_F, 'RN50', k): Published(v, 'Tip paper')
       for k, v in zip((1, 2, 4, 8, 16),
                       (61.32, 61.69, 62.52, 64.00, 65.51))},
    **_figures('Tip paper', 'RN50', 'imagenet', 0, {ZERO_SHOT: 60.33}),
    **_figures('Tip paper', 'RN50', 'imagenet', 16, {
        CLIP_ADAPTER: 63.59, 'CoOp': 62.95}),
    **_figures('APE notebook', 'RN50', 'imagenet', 16, {'APE': 63.42}),
    **_figures('GDA logs', 'RN50', 'imagenet', 16, {'GDA': 63.82}),
    # ImageNet, ViT-B/16, 16 shots.
    **_figures('Tip paper', 'ViT-B-16', 'imagenet', 0, {ZERO_SHOT: 68.73}),
    **_figures('Tip paper', 'ViT-B-16', 'imagenet', 16, {
        TIP: 70.75, TIP_F: 73.69, CLIP_ADAPTER: 71.13, 'CoOp': 71.92}),
    **_figures('CLIP-LoRA paper', 'ViT-B-16', 'imagenet', 16,
               {'CLIP-LoRA': 73.6}),
    **_figures('APE notebook', 'ViT-B-16', 'imagenet', 16, {'APE': 72.17}),
    **_figures('GDA logs', 'ViT-B-16', 'imagenet', 16, {'GDA': 72.24}),
    # Average over the 11 datasets, RN50, 16 shots.
    **_figures('Tip exp.log', 'RN50', AVERAGE, 0, {ZERO_SHOT: 58.89}),
    **_figures('Tip exp.log', 'RN50', AVERAGE, 16, {
        TIP: 70.32, TIP_F: 75.83, CLIP_ADAPTER: 74.44}),
    **_figures('APE notebook', 'RN50', AVERAGE, 16, {
        'APE': 73.36, 'CoOp': 73.45}),
    **_figures('GDA logs', 'RN50', AVERAGE, 16, {'GDA': 76.05}),
    **_figures('ProLIP paper', 'RN50', AVERAGE, 16, {'ProLIP': 75.46}),
    # Average over the 11 datasets, ViT-B/16, 16 shots.
    **_figures('CLIP-SVD README', 'ViT-B-16', AVERAGE, 0,
               {ZERO_SHOT: 65.36}),
    **_figures('CLIP-SVD README', 'ViT-B-16', AVERAGE, 16, {
        TIP: 76.44, TIP_F: 81.15, CLIP_ADAPTER: 79.86, 'GDA': 81.70,
        'Linear probe': 78.39, 'LP++': 80.32, 'ProKeR': 82.01,
        'CoOp': 79.01, 'CoCoOp': 75.02, 'MaPLe': 81.79}),
    **_figures('CLIP-LoRA paper', 'ViT-B-16', AVERAGE, 16,
               {'CLIP-LoRA': 83.0}),
}

#: The generalisation settings of ``--setting`` (docs/generalization.md).
SETTINGS = ('few_shot', 'base_to_new', 'cross_dataset', 'domain_shift')


class PublishedB2N(NamedTuple):
    """Published base-to-new accuracies (%): base, new, their harmonic
    mean H, and the key of the source in :data:`SOURCES`."""
    base: float
    new: float
    H: float
    source: str


#: Published base-to-new figures, keyed like :data:`PAPER` (16 shots; 0 =
#: zero-shot CLIP): the 11-dataset averages, ViT-B/16.
PAPER_B2N: Dict[Tuple[str, str, str, int], PublishedB2N] = {
    (AVERAGE, ZERO_SHOT, 'ViT-B-16', 0): PublishedB2N(
        69.34, 74.22, 71.70, 'MaPLe README'),
    (AVERAGE, 'CoOp', 'ViT-B-16', 16): PublishedB2N(
        82.69, 63.22, 71.66, 'MaPLe README'),
    (AVERAGE, 'CoCoOp', 'ViT-B-16', 16): PublishedB2N(
        80.47, 71.69, 75.83, 'MaPLe README'),
    (AVERAGE, 'MaPLe', 'ViT-B-16', 16): PublishedB2N(
        82.28, 75.14, 78.55, 'MaPLe README'),
    (AVERAGE, 'VPT', 'ViT-B-16', 16): PublishedB2N(
        80.24, 73.43, 76.68, 'MaPLe README'),
    (AVERAGE, 'CLIP-LoRA', 'ViT-B-16', 16): PublishedB2N(
        84.10, 74.80, 79.18, 'CLIP-SVD README'),
}

#: Table names by config-file prefix (the dataset follows the prefix), for
#: a config whose head class is not registered (yet); longest first.
PREFIX_METHODS: Dict[str, str] = {
    'cache_only_f': 'Cache only-F',
    'cache_only': 'Cache only',
    'lp_plus_plus': 'LP++',
    'linear_probe': 'Linear probe',
    'clip_adapter': CLIP_ADAPTER,
    'zero_shot': ZERO_SHOT,
    'taskres': 'TaskRes',
    'prolip': 'ProLIP',
    'proker': 'ProKeR',
    'tip_f': TIP_F,
    'clap': 'CLAP',
    'tip': TIP,
    'gda': 'GDA',
    'ape': 'APE',
    'ncm': 'NCM',
}
METHOD_PREFIX = re.compile(
    r'^(' + '|'.join(sorted(PREFIX_METHODS, key=len, reverse=True)) + r')_')
#: Training-free methods whose fine-tuned version has its own name; any
#: other head keeps its ``method_name`` whether the config trains it or not
#: (CLAP, CLIP-Adapter, ... always train).
FINE_TUNED: Dict[str, str] = {TIP: TIP_F, 'Cache only': 'Cache only-F',
                              'APE': 'APE-T'}

RESULT_FILE = 'sweep_result.json'
LOG_FILE = 'sweep_cell.log'
#: What ``tools/test.py --save-model`` writes in a training-free cell (read
#: for the hyperparameters, then removed unless ``--keep-models``).
ADAPTED_MODEL = 'adapted_model.pth'
#: What ``HyperparameterSearchHook`` saves after training.
FINAL_MODEL = 'final_searched.pth'
TEST_TOP1 = re.compile(r'Epoch\(test\).*?accuracy/top1: ([0-9.]+)')
SUPPORT_VIEWS = re.compile(r'(support_views_\w+\.pth)')
CELL_DIR = re.compile(r'^shots(\d+)_seed(-?\d+)(?:_(\w+))?$')


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
    head: Dict[str, Any] = field(default_factory=dict)
    #: The config's own ``few_shot_cfg.protocol`` (default 'val').
    protocol: str = 'val'
    #: ``--setting`` of the sweep (:data:`SETTINGS`).
    setting: str = 'few_shot'
    #: (name, config) of the configs tested with the cell's model after
    #: its own run: ('new', <..._new.py>) for base-to-new, (target, config)
    #: for cross-dataset and domain shift; none for few-shot.
    tests: List[Tuple[str, str]] = field(default_factory=list)


@dataclass
class Cell:
    """One (config, shots, seed, protocol) run."""
    experiment: Experiment
    shots: int
    seed: int
    work_dir: str
    extra: Dict[str, Any] = field(default_factory=dict)
    protocol: str = 'val'

    @property
    def result_path(self) -> str:
        return osp.join(self.work_dir, RESULT_FILE)

    @property
    def name(self) -> str:
        return (f'{self.experiment.stem} shots={self.shots} seed={self.seed}'
                f' protocol={self.protocol}')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line (``argv``: defaults to ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(
        description='Run configs over shots x seeds x protocols (one '
        'process per cell, one feature store, resumable) and write '
        'results.md, results.csv and plots from every cell result in the '
        'work directory.')
    parser.add_argument(
        'configs', nargs='+', metavar='CONFIG',
        help='experiment configs, one dataset and one method each; the '
        "table names the method by the head's method_name (or the file "
        'name prefix, e.g. clap_<dataset>_16shot.py) and the dataset by the '
        "config's dataset_name")
    parser.add_argument(
        '--shots', nargs='+', type=int, default=[1, 2, 4, 8, 16],
        help='shots per class (default: 1 2 4 8 16)')
    parser.add_argument(
        '--seeds', nargs='+', type=int, default=[1, 2, 3],
        help='seeds of the few-shot draw and of the cache augmentations '
        '(default: 1 2 3)')
    parser.add_argument(
        '--protocols', nargs='+', choices=PROTOCOLS, default=None,
        help='few_shot_cfg.protocol of the cells: what selects '
        'hyperparameters and epochs (val: the val split; fewshot_val: '
        'min(K, 4) per class of it; kshot_val: K per class; none: the '
        "methods' validation-free values, last epoch; reference_test: the "
        "reference code's selection on test). Default: each config's own "
        "(val in the dataset bases)")
    parser.add_argument(
        '--work-dir', default='work_dirs/sweep',
        help='root of the cell directories, feature store and results '
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
        'seed, few_shot_cfg.feature_dir, few_shot_cfg.protocol) are '
        'refused')
    parser.add_argument(
        '--keep-models', action='store_true',
        help=f'keep each training-free cell\'s {ADAPTED_MODEL} (the '
        'adapted head, for tools/test.py and tools/infer.py); by default it '
        'is removed once its hyperparameters are recorded')
    parser.add_argument(
        '--dry-run', action='store_true',
        help='print the commands of the cells still to run, run nothing')
    parser.add_argument(
        '--setting', choices=SETTINGS, default='few_shot',
        help='few_shot (default): each config on its own test split. '
        'base_to_new: CONFIGs are <method>_<dataset>_base.py; each cell '
        'then tests the _new.py beside it with its model (base, new, H). '
        'cross_dataset / domain_shift: CONFIGs are ImageNet configs; each '
        'cell then tests the target configs generalization/cross_dataset/'
        '<stem>_to_*.py / generalization/<stem>_to_*.py (beside the '
        'CONFIG) with its model. Cells and tables of a setting go to '
        '<work-dir>/<setting>/')
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


def head_class(head_type: str) -> Optional[type]:
    """The registered head class named ``head_type``, or None."""
    import tip_adapter_mm  # noqa: F401  (registers the heads)
    from mmpretrain.registry import MODELS
    return MODELS.get(head_type)


def method_name(head_type: str, trains: bool,
                stem: Optional[str] = None) -> str:
    """The table name of a config's method.

    The head class's ``method_name`` (``Tip-Adapter-F`` when a config trains
    Tip-Adapter, see :data:`FINE_TUNED`); for a head class that is not
    registered, the name of the config-file prefix of ``stem``
    (:data:`PREFIX_METHODS`), else the head type itself.
    """
    cls = head_class(head_type)
    name = getattr(cls, 'method_name', '') if cls is not None else ''
    match = METHOD_PREFIX.match(stem or '')
    if not name:
        name = (PREFIX_METHODS[match.group(1)] if cls is None and match
                else head_type)
    return FINE_TUNED.get(name, name) if trains else name


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


def load_experiment(path: str, cfg_options: Dict[str, Any],
                    setting: str = 'few_shot') -> Experiment:
    """Read a config (with the sweep's ``--cfg-options``) and check that the
    sweep can drive it in ``setting`` (:func:`setting_tests`).

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
    head_type = str(head.get('type', 'TipAdapterHead'))
    dataset, method = names_from_stem(
        stem, method_name(head_type, trains, stem), cfg.get('dataset_name'))
    protocol = (cfg.get('few_shot_cfg') or {}).get('protocol') or 'val'
    return Experiment(
        config=path, stem=stem, dataset=dataset, method=method,
        trains=trains,
        reencode=trains and train_set.get('type') == 'FewShotDataset',
        backbone=backbone_name((cfg.get('model') or {}).get('backbone')),
        head=copy.deepcopy(dict(head, type=head_type)),
        protocol=str(protocol), setting=setting,
        tests=setting_tests(path, stem, setting))


def setting_tests(config: str, stem: str,
                  setting: str) -> List[Tuple[str, str]]:
    """(name, config) of the configs a cell of ``setting`` tests with its
    model after its own run: none for 'few_shot'; ('new', the
    ``<method>_<dataset>_new.py`` beside a ``..._base.py``) for
    'base_to_new'; (target, config) for each
    ``generalization/cross_dataset/<stem>_to_<target>.py`` ('cross_dataset')
    or ``generalization/<stem>_to_<target>.py`` ('domain_shift') under the
    config's folder, by target name.

    Raises:
        ValueError: an unknown setting, or a base-to-new config whose name
            does not end with ``_base.py``.
        FileNotFoundError: no ``_new.py`` beside it, or no target config.
    """
    if setting not in SETTINGS:
        raise ValueError(f'setting must be one of {SETTINGS}, got '
                         f'{setting!r}.')
    if setting == 'few_shot':
        return []
    folder = osp.dirname(config)
    if setting == 'base_to_new':
        if not stem.endswith('_base'):
            raise ValueError(
                f"{config}: --setting base_to_new takes the configs of the "
                "base classes, '<method>_<dataset>_base.py' "
                '(configs/generalization/base_to_new/).')
        new = osp.join(folder, stem[:-len('_base')] + '_new.py')
        if not osp.isfile(new):
            raise FileNotFoundError(
                f'{config}: no {new} beside it (the config of the new '
                'classes). A head fitted per class (Tip-Adapter, GDA, ...) '
                'has none: it cannot name new classes '
                '(docs/generalization.md).')
        return [('new', new)]
    sub = (osp.join('generalization', 'cross_dataset')
           if setting == 'cross_dataset' else 'generalization')
    pattern = osp.join(folder, sub, f'{stem}_to_*.py')
    targets = sorted(glob.glob(pattern))
    if not targets:
        raise FileNotFoundError(
            f'{config}: --setting {setting} found no target config '
            f'{pattern} (docs/generalization.md).')
    prefix = f'{stem}_to_'
    return [(osp.splitext(osp.basename(t))[0][len(prefix):], t)
            for t in targets]


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
    rows: Dict[Tuple[str, str, Optional[str]], str] = {}
    for exp in experiments:
        row = (exp.dataset, exp.method, exp.backbone)
        for seen, key, what in ((stems, exp.stem, 'a work directory'),
                                (rows, row, 'a table row')):
            if key in seen:
                raise ValueError(f'{seen[key]} and {exp.config} would share '
                                 f'{what} ({key}); rename one.')
            seen[key] = exp.config


def check_user_options(options: Dict[str, Any],
                       experiment: Experiment) -> None:
    """Refuse ``--cfg-options`` keys the sweep sets per cell."""
    owned = set(sweep_options(experiment, 1, 1, '', 'val'))
    clash = sorted(owned & set(options))
    if clash:
        raise ValueError(f'--cfg-options {clash}: the sweep sets these per '
                         'cell; use --shots, --seeds, --protocols or '
                         '--work-dir.')


def sweep_options(experiment: Experiment, shots: int, seed: int,
                  feature_dir: str, protocol: str = 'val') -> Dict[str, Any]:
    """The ``--cfg-options`` that make a cell of ``experiment``."""
    options: Dict[str, Any] = {
        'fewshot_dataloader.dataset.num_shots': shots,
        'fewshot_dataloader.dataset.seed': seed,
        'few_shot_cfg.feature_dir': feature_dir,
        'few_shot_cfg.protocol': protocol,
    }
    if experiment.reencode:
        options['train_dataloader.dataset.num_shots'] = shots
        options['train_dataloader.dataset.seed'] = seed
    return options


def cell_dir_name(shots: int, seed: int, protocol: str) -> str:
    """``shots<K>_seed<S>_<protocol>``."""
    return f'shots{shots}_seed{seed}_{protocol}'


def make_cells(experiments: Sequence[Experiment],
               shots: Sequence[int],
               seeds: Sequence[int],
               work_dir: str,
               protocols: Optional[Sequence[str]] = None,
               feature_dir: Optional[str] = None) -> List[Cell]:
    """The grid, config-major, then protocols, shots, seeds; one feature
    store for all (default ``<work_dir>/feature_cache``).
    ``protocols=None``: each config's own."""
    feature_dir = feature_dir or osp.join(work_dir, 'feature_cache')
    cells = []
    for exp in experiments:
        root = osp.join(work_dir, exp.stem)
        for p in (protocols or [exp.protocol]):
            for k in shots:
                for s in seeds:
                    cells.append(Cell(
                        exp, k, s, osp.join(root, cell_dir_name(k, s, p)),
                        sweep_options(exp, k, s, feature_dir, p),
                        protocol=p))
    return cells


def cell_command(cell: Cell, args: argparse.Namespace) -> List[str]:
    """The command line of one cell; a training-free cell saves its adapted
    model (``--save-model``) for the record of its hyperparameters."""
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
    if not exp.trains:
        head += ['--save-model', osp.join(cell.work_dir, ADAPTED_MODEL)]
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
                num_samples=report.get('num_samples'),
                zero_shot_top1=report.get('zero_shot_accuracy'),
                declined=report.get('declined'),
                edges=report.get('edges') or [],
                kept=report.get('kept') or {})


def declined_counts(records: Sequence[dict]
                    ) -> 'Dict[Tuple[Row, int], Tuple[int, int]]':
    """``{(row, shots): (declined, searched)}``: of the seeds whose search
    report says whether the cache was declined (best = zero-shot, or no
    better than zero-shot on the selecting split; ``declined`` in
    ``hyperparameter_search.json``), how many declined it."""
    counts: Dict[Tuple[Row, int], Tuple[int, int]] = {}
    for r in records:
        flag = (r.get('search') or {}).get('declined')
        if flag is None:
            continue
        key = (row_of(r), int(r['shots']))
        done, searched = counts.get(key, (0, 0))
        counts[key] = (done + bool(flag), searched + 1)
    return counts


def support_views_entry(output: str) -> Optional[str]:
    """The feature-store file of the support views a cell fitted its head
    on (``support_views_<key>.pth``, from the builder's log), or None (a
    head that needs no support set)."""
    found = SUPPORT_VIEWS.findall(output)
    return found[-1] if found else None


def adapted_head(path: str, head_cfg: Dict[str, Any]) -> Tuple[Any, dict]:
    """The head of a saved model (built from ``head_cfg``, loaded from the
    checkpoint at ``path``) and the checkpoint's message hub."""
    import torch

    import tip_adapter_mm  # noqa: F401  (registers the heads)
    from mmpretrain.registry import MODELS
    checkpoint = torch.load(path, map_location='cpu', weights_only=False)
    state = {k[len('head.'):]: v
             for k, v in checkpoint['state_dict'].items()
             if k.startswith('head.')}
    head = MODELS.build(copy.deepcopy(head_cfg))
    head.load_state_dict(state, strict=False)
    return head, checkpoint.get('message_hub') or {}


def epoch_of(path: Optional[str]) -> Optional[int]:
    """N of a checkpoint named ``..._epoch_N.pth`` / ``epoch_N.pth``."""
    match = re.search(r'epoch_(\d+)\.pth$', path or '')
    return int(match.group(1)) if match else None


def tested_model(cell: Cell) -> Tuple[Optional[str], Optional[int]]:
    """The checkpoint of the model a cell tested, and its epoch if it is
    the last one: ``adapted_model.pth`` (training-free), else
    ``final_searched.pth`` (written by ``HyperparameterSearchHook`` after
    training: the best epoch on validation, or the last one), else the last
    ``epoch_N.pth`` (a trained config without the search hook tests the
    last epoch)."""
    if not cell.experiment.trains:
        return osp.join(cell.work_dir, ADAPTED_MODEL), None
    final = osp.join(cell.work_dir, FINAL_MODEL)
    if osp.isfile(final):
        return final, None
    epochs = {epoch_of(p): p for p in glob.glob(
        osp.join(cell.work_dir, 'epoch_*.pth'))}
    epochs.pop(None, None)
    if not epochs:
        return None, None
    last = max(epochs)
    return epochs[last], last


def head_record(cell: Cell) -> Dict[str, Any]:
    """What the model a cell tested says: the head's hyperparameters,
    whether they were searched, and for a trained head the epoch kept (the
    best on the protocol's validation data, or the last one)."""
    path, last = tested_model(cell)
    record: Dict[str, Any] = dict(hyperparameters=None, searched=None,
                                  selected_epoch=None, epoch_rule=None)
    if path is None or not osp.isfile(path):
        print(f'{cell.name}: no {path or "checkpoint"} in {cell.work_dir}; '
              'hyperparameters not recorded.', flush=True)
        return record
    try:
        head, hub = adapted_head(path, cell.experiment.head)
    except Exception as error:  # noqa: BLE001  (the run itself succeeded)
        print(f'{cell.name}: could not read the hyperparameters of the '
              f'head in {path} ({type(error).__name__}: {error}); they are '
              'not recorded.', flush=True)
        return dict(record, hyperparameters_error=str(error))
    record.update(hyperparameters=dict(head.hyperparameters),
                  searched=head.searched)
    if not cell.experiment.trains:
        return record
    best = (hub.get('runtime_info') or {}).get('best_ckpt')
    if last is None and best:  # the search hook loaded the best epoch
        record.update(selected_epoch=epoch_of(best),
                      epoch_rule=f'best on {cell.protocol}')
    else:
        if last is None:
            last = max((e for e in map(epoch_of, glob.glob(osp.join(
                cell.work_dir, 'epoch_*.pth'))) if e is not None),
                default=None)
        record.update(selected_epoch=last, epoch_rule='last')
    return record


def tail(text: str, chars: int = 4000) -> str:
    """The last ``chars`` characters of ``text``."""
    return text if len(text) <= chars else '...' + text[-chars:]


def test_command(cell: Cell, config: str, checkpoint: str, work_dir: str,
                 args: argparse.Namespace) -> List[str]:
    """``tools/test.py CONFIG CHECKPOINT`` of a setting's test (the
    ``_new`` config, a target) with the cell's model, shots, seed, feature
    store and protocol (``tools/dist_test.sh`` with ``--gpus`` > 1)."""
    options = [f'{k}={v}' for k, v in cell.extra.items()
               if not k.startswith('train_dataloader.')]
    options += list(args.cfg_options)
    if args.gpus > 1:
        head = ['bash', osp.join(TOOLS, 'dist_test.sh'), config,
                str(args.gpus), checkpoint]
    else:
        head = [sys.executable, osp.join(TOOLS, 'test.py'), config,
                checkpoint, '--launcher', args.launcher]
    return head + ['--work-dir', work_dir, '--cfg-options', *options]


def run_tests(cell: Cell, args: argparse.Namespace
              ) -> Optional[Dict[str, Dict[str, Any]]]:
    """Test the cell's model on each of its setting's configs
    (``Experiment.tests``), each in ``<cell>/<name>/`` with its log
    ``<cell>/<name>/sweep_test.log``: ``{name: {config, top1,
    wall_time_s, command}}``; None (after printing why) if one failed."""
    checkpoint, _ = tested_model(cell)
    if checkpoint is None or not osp.isfile(checkpoint):
        found = checkpoint or 'no checkpoint'
        print(f'FAILED {cell.name}: no model to test on the '
              f'{cell.experiment.setting} configs ({found} in '
              f'{cell.work_dir}).', flush=True)
        return None
    results: Dict[str, Dict[str, Any]] = {}
    for name, config in cell.experiment.tests:
        work_dir = osp.join(cell.work_dir, name)
        os.makedirs(work_dir, exist_ok=True)
        command = test_command(cell, config, checkpoint, work_dir, args)
        log_path = osp.join(work_dir, 'sweep_test.log')
        start = time.time()
        with open(log_path, 'w') as log:
            proc = subprocess.run(command, stdout=log,
                                  stderr=subprocess.STDOUT)
        with open(log_path, errors='replace') as f:
            output = f.read()
        top1 = parse_test_top1(output)
        if proc.returncode != 0 or top1 is None:
            why = (f'exit status {proc.returncode}' if proc.returncode
                   else 'no "Epoch(test) ... accuracy/top1" line')
            print(f'FAILED {cell.name}: the test on {name} ({config}) '
                  f'with {checkpoint} ({why}). Output tail:\n'
                  f'{tail(output)}\nCommand: {shlex.join(command)}\n'
                  f'Full log: {log_path}', flush=True)
            return None
        results[name] = dict(config=config, top1=top1,
                             wall_time_s=round(time.time() - start, 1),
                             command=command)
    return results


def setting_record(experiment: Experiment, top1: float,
                   tests: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """What a cell of a generalisation setting adds to its record: the
    tests, and for base-to-new ``base`` (the cell's own top-1), ``new``
    and ``H`` (their harmonic mean)."""
    record: Dict[str, Any] = dict(setting=experiment.setting, tests=tests)
    if experiment.setting == 'base_to_new':
        from tip_adapter_mm.evaluation import harmonic_mean
        new = tests['new']['top1']
        record.update(base=top1, new=new, H=harmonic_mean(top1, new))
    return record


def run_cell(cell: Cell, command: List[str], cfg_options: Sequence[str] = (),
             keep_models: bool = False,
             args: Optional[argparse.Namespace] = None
             ) -> Optional[Dict[str, Any]]:
    """Run a cell, log its output to ``sweep_cell.log``, then test its
    model on its setting's configs (:func:`run_tests`; ``args``: the
    sweep's, for ``--gpus``, ``--launcher`` and ``--cfg-options``); save
    and return its record; None (after printing the output tail) if a run
    failed."""
    os.makedirs(cell.work_dir, exist_ok=True)
    adapted = osp.join(cell.work_dir, ADAPTED_MODEL)
    if osp.exists(adapted):  # from an earlier, failed try of this cell
        os.remove(adapted)
    log_path = osp.join(cell.work_dir, LOG_FILE)
    start = time.time()
    with open(log_path, 'w') as log:
        proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    wall = time.time() - start
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
        method=exp.method, backbone=exp.backbone, trains=exp.trains,
        shots=cell.shots, seed=cell.seed, protocol=cell.protocol, top1=top1,
        **head_record(cell),
        search=search_best(cell.work_dir, start - 1),
        support_views=support_views_entry(output),
        wall_time_s=round(wall, 1),
        cfg_options=list(cfg_options), command=command)
    if exp.tests:
        if args is None:
            args = argparse.Namespace(gpus=1, launcher='none',
                                      cfg_options=list(cfg_options))
        tests = run_tests(cell, args)
        if tests is None:
            return None
        result.update(setting_record(exp, top1, tests))
    write_json_atomic(cell.result_path, result)
    if not keep_models and osp.exists(adapted):
        os.remove(adapted)
    return result


def run_sweep(cells: Sequence[Cell], args: argparse.Namespace) -> List[Cell]:
    """Run the cells without a result; return those that failed."""
    failed = []
    for i, cell in enumerate(cells, 1):
        prefix = f'[{i}/{len(cells)}] {cell.name}:'
        done = read_result(cell.result_path)
        if done is not None and not set(
                name for name, _ in cell.experiment.tests) <= set(
                    done.get('tests') or {}):
            done = None  # the cell's setting tests are missing: run again
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
            then = ''.join(
                f'; then tools/test.py {config} with its model ({name})'
                for name, config in cell.experiment.tests)
            print(f'{prefix} would run {shlex.join(command)}{then}',
                  flush=True)
            continue
        print(f'{prefix} run', flush=True)
        result = run_cell(cell, command, args.cfg_options,
                          getattr(args, 'keep_models', False), args)
        if result is None:
            failed.append(cell)
        else:
            tests = ''.join(f', {name} {t["top1"]:.2f}' for name, t in
                            (result.get('tests') or {}).items())
            print(f'{prefix} top-1 {result["top1"]:.2f}{tests} '
                  f'({result["wall_time_s"]:.0f} s)', flush=True)
    return failed


# -- tables ------------------------------------------------------------------

#: A table row: (dataset, backbone, method, protocol).
Row = Tuple[str, str, str, str]


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


def load_records(work_dir: str,
                 experiments: Sequence[Experiment] = ()) -> List[dict]:
    """Every cell record under ``work_dir`` (``<stem>/<cell>/``), one per
    (dataset, backbone, method, protocol, shots, seed).

    A record of an older sweep (``shots<K>_seed<S>`` directory, no
    ``protocol``) counts as protocol 'val', its backbone that of the current
    config of the same stem; where two records give the same cell, the one
    in a ``..._<protocol>`` directory wins, then the newer.
    """
    backbones = {e.stem: e.backbone for e in experiments}
    chosen: Dict[tuple, Tuple[tuple, dict]] = {}
    for path in glob.glob(osp.join(work_dir, '*', '*', RESULT_FILE)):
        record = read_result(path)
        match = CELL_DIR.match(osp.basename(osp.dirname(path)))
        if record is None or match is None:
            continue
        record = dict(record)
        stem = record.get('stem') or osp.basename(
            osp.dirname(osp.dirname(path)))
        record.setdefault('stem', stem)
        record.setdefault('protocol', match.group(3) or 'val')
        if record.get('backbone') is None:
            record['backbone'] = backbones.get(stem)
        try:
            key = (str(record['dataset']), str(record['backbone']),
                   str(record['method']), str(record['protocol']),
                   int(record['shots']), int(record['seed']))
        except (KeyError, TypeError, ValueError):
            continue
        rank = (match.group(3) is not None, osp.getmtime(path))
        if key not in chosen or rank > chosen[key][0]:
            chosen[key] = (rank, record)
    return [record for _, record in chosen.values()]


def row_of(record: dict) -> Row:
    return (str(record['dataset']), str(record['backbone']),
            str(record['method']), str(record['protocol']))


def order_rows(rows: Sequence[Row], records: Sequence[dict],
               experiments: Sequence[Experiment]) -> List[Row]:
    """Datasets in order of first appearance (the sweep's configs first),
    then methods likewise, then protocols in :data:`PROTOCOLS` order."""
    seen = [(e.dataset, e.method) for e in experiments] + [
        (r['dataset'], r['method']) for r in sorted(
            records, key=lambda r: (str(r['dataset']), str(r['stem'])))]
    datasets = list(dict.fromkeys(str(d) for d, _ in seen))
    methods = list(dict.fromkeys(str(m) for _, m in seen))

    def key(row: Row):
        dataset, backbone, method, protocol = row
        return (dataset == AVERAGE,
                datasets.index(dataset) if dataset in datasets else 0,
                backbone, methods.index(method) if method in methods else
                len(methods), method,
                PROTOCOLS.index(protocol) if protocol in PROTOCOLS else
                len(PROTOCOLS), protocol)

    return sorted(rows, key=key)


def seed_values(records: Sequence[dict]
                ) -> Dict[Row, Dict[int, Dict[int, float]]]:
    """``{row: {shots: {seed: top-1}}}``."""
    values: Dict[Row, Dict[int, Dict[int, float]]] = {}
    for r in records:
        values.setdefault(row_of(r), {}).setdefault(
            int(r['shots']), {})[int(r['seed'])] = float(r['top1'])
    return values


def averages(values: Dict[Row, Dict[int, Dict[int, float]]]
             ) -> Tuple[Dict[Row, Dict[int, Dict[int, float]]],
                        Dict[str, List[str]]]:
    """The :data:`AVERAGE` rows and the datasets each backbone averages.

    Per (backbone, method, protocol, shots): for each seed done on every
    dataset present for that backbone (at least two), the mean over the
    datasets; nothing where a dataset or every common seed is missing.
    """
    datasets: Dict[str, List[str]] = {}
    for dataset, backbone, _, _ in values:
        if dataset != AVERAGE and dataset not in datasets.setdefault(
                backbone, []):
            datasets[backbone].append(dataset)
    datasets = {b: sorted(d) for b, d in datasets.items() if len(d) > 1}
    out: Dict[Row, Dict[int, Dict[int, float]]] = {}
    groups = {(b, m, p) for d, b, m, p in values if b in datasets}
    for backbone, method, protocol in groups:
        rows = [values.get((d, backbone, method, protocol), {})
                for d in datasets[backbone]]
        for k in set.intersection(*(set(r) for r in rows)):
            seeds = set.intersection(*(set(r[k]) for r in rows))
            if seeds:
                out.setdefault((AVERAGE, backbone, method, protocol), {})[
                    k] = {s: statistics.fmean(r[k][s] for r in rows)
                          for s in sorted(seeds)}
    return out, datasets


def collect(records: Sequence[dict],
            experiments: Sequence[Experiment] = ()
            ) -> Tuple[Dict[Row, Dict[int, Stat]], Dict[str, List[str]]]:
    """``{row: {shots: Stat}}`` over the seeds with a result, ordered (see
    :func:`order_rows`), the :data:`AVERAGE` rows last; and the datasets
    averaged per backbone."""
    values = seed_values(records)
    average, datasets = averages(values)
    values.update(average)
    table = {row: {k: summarise(list(by_seed.values()))
                   for k, by_seed in sorted(values[row].items())}
             for row in order_rows(list(values), records, experiments)}
    return table, datasets


def base_method(method: str) -> str:
    """The method without a config variant: 'Tip-Adapter-F (reencode)' ->
    'Tip-Adapter-F'."""
    return method.split(' (')[0]


def paper_backbone(backbone: Optional[str]) -> Optional[str]:
    """open_clip's spelling of a backbone: 'ViT-B/16' -> 'ViT-B-16'."""
    return backbone.replace('/', '-') if backbone else None


def published(dataset: str, method: str, shots: int,
              backbone: Optional[str]) -> Optional[Published]:
    """The published figure for a cell, if a source has one; zero-shot CLIP
    has one figure for any shots."""
    method = base_method(method)
    backbone = paper_backbone(backbone)
    return (PAPER.get((dataset.lower(), method, backbone, shots)) or (
        PAPER.get((dataset.lower(), method, backbone, 0))
        if method == ZERO_SHOT else None))


def paper_figure(dataset: str, method: str, shots: int,
                 backbone: Optional[str]) -> Optional[float]:
    """The published top-1 for a cell, or None."""
    found = published(dataset, method, shots, backbone)
    return None if found is None else found.top1


def row_published(row: Row, shots: int,
                  averaged: Dict[str, List[str]]) -> Optional[Published]:
    """The published figure beside a table cell. An average row gets the
    published 11-dataset average only when it averages exactly those
    11 datasets."""
    dataset, backbone, method, _ = row
    if dataset == AVERAGE and sorted(averaged.get(backbone, ())) != sorted(
            BENCHMARK_DATASETS):
        return None
    return published(dataset, method, shots, backbone)


def format_cell(stat: Optional[Stat], paper: Optional[Published],
                declined: Optional[Tuple[int, int]] = None) -> str:
    """``mean ± std (n)`` [``declined d/s``] [``[paper P, source]``]; '-'
    without a result. ``declined``: (seeds whose search declined the
    cache, seeds searched), shown when the first is not 0."""
    text = '-'
    if stat is not None:
        std = f'{stat.std:.2f}' if stat.std is not None else 'n/a'
        text = f'{stat.mean:.2f} ± {std} ({stat.n})'
        if declined and declined[0]:
            text += f' declined {declined[0]}/{declined[1]}'
    if paper is not None:
        text += f' [paper {paper.top1:.2f}, {paper.source}]'
    return text


def csv_fields(shots: Sequence[int]) -> List[str]:
    return ['dataset', 'backbone', 'method', 'protocol'] + [
        f'{k}shot_{c}' for k in shots
        for c in ('mean', 'std', 'n', 'paper', 'paper_source')]


def lost_rows(old_rows: Sequence[Dict[str, str]],
              new_rows: Sequence[Dict[str, Any]]) -> List[Dict[str, str]]:
    """Rows of an earlier ``results.csv`` that the new one lacks, or holds
    with fewer seeds at some shots (matched on the key columns both have:
    an older table may lack backbone and protocol)."""
    lost = []
    for old in old_rows:
        keys = [c for c in ('dataset', 'backbone', 'method', 'protocol')
                if c in old]
        matches = [n for n in new_rows
                   if all(str(n[c]) == old[c] for c in keys)
                   # A table from before protocols: its rows were 'val'.
                   and ('protocol' in old or n['protocol'] == 'val')]
        counts = {c: int(v) for c, v in old.items()
                  if c.endswith('shot_n') and str(v).isdigit()}
        if not matches or any(
                max(int(m.get(c) or 0) for m in matches) < v
                for c, v in counts.items()):
            lost.append(old)
    return lost


def keep_previous_tables(md_path: str, csv_path: str,
                         new_rows: Sequence[Dict[str, Any]]) -> List[str]:
    """Copy the current tables aside (``results.<time>.md/.csv``) if the
    new ones would lose a row; the paths of the copies."""
    if not osp.isfile(csv_path):
        return []
    with open(csv_path, newline='') as f:
        old_rows = list(csv.DictReader(f))
    if not lost_rows(old_rows, new_rows):
        return []
    stamp = time.strftime('%Y%m%d_%H%M%S')
    copies = []
    for path in (md_path, csv_path):
        if osp.isfile(path):
            root, ext = osp.splitext(path)
            copy_path = f'{root}.{stamp}{ext}'
            shutil.copy2(path, copy_path)
            copies.append(copy_path)
    print('The new tables lack rows of the previous ones (a cell result '
          f'was removed?); kept the previous tables as {", ".join(copies)}.',
          flush=True)
    return copies


def write_tables(table: Dict[Row, Dict[int, Stat]], shots: Sequence[int],
                 work_dir: str,
                 averaged: Optional[Dict[str, List[str]]] = None,
                 declined: Optional[Dict[Tuple[Row, int],
                                         Tuple[int, int]]] = None
                 ) -> Tuple[str, str]:
    """``results.md`` and ``results.csv`` under ``work_dir``; ``averaged``:
    the datasets of each backbone's :data:`AVERAGE` rows; ``declined``:
    :func:`declined_counts`."""
    averaged = averaged or {}
    declined = declined or {}
    md_path = osp.join(work_dir, 'results.md')
    csv_path = osp.join(work_dir, 'results.csv')
    lines = [
        '| dataset | backbone | method | protocol | ' + ' | '.join(
            f'{k} shot' for k in shots) + ' |',
        '|---|---|---|---|' + '---|' * len(shots)
    ]
    rows = []
    shown: Dict[Tuple[str, str, str, int], Published] = {}
    for row, stats in table.items():
        dataset, backbone, method, protocol = row
        papers = [row_published(row, k, averaged) for k in shots]
        lines.append(f'| {dataset} | {backbone} | {method} | {protocol} | '
                     + ' | '.join(format_cell(stats.get(k), p,
                                              declined.get((row, k)))
                                  for k, p in zip(shots, papers)) + ' |')
        out: Dict[str, Any] = dict(dataset=dataset, backbone=backbone,
                                   method=method, protocol=protocol)
        for k, p in zip(shots, papers):
            stat = stats.get(k)
            out[f'{k}shot_mean'] = '' if stat is None else round(stat.mean, 4)
            out[f'{k}shot_std'] = ('' if stat is None or stat.std is None
                                   else round(stat.std, 4))
            out[f'{k}shot_n'] = 0 if stat is None else stat.n
            out[f'{k}shot_paper'] = '' if p is None else p.top1
            out[f'{k}shot_paper_source'] = '' if p is None else p.source
            if p is not None:
                zero = base_method(method) == ZERO_SHOT
                shown[(dataset, backbone, base_method(method),
                       0 if zero else k)] = p
        rows.append(out)
    lines += ['', 'Top-1 (%) on the test split: mean ± sample std (ddof=1) '
              '(number of seeds). protocol: what selected the '
              'hyperparameters and the epoch (few_shot_cfg.protocol, '
              'docs/protocol.md). [paper X, source]: the published figure '
              '(docs/results_sources.md); its own selection protocol is '
              'listed below and may differ from the row\'s. declined d/s: '
              'in d of the s seeds searched, the hyperparameter search '
              'declined the cache (its best point is zero-shot CLIP, or no '
              'better than zero-shot on the split that selects; '
              'docs/protocol.md).']
    for backbone, names in sorted(averaged.items()):
        missing = sorted(set(BENCHMARK_DATASETS) - set(names))
        lines.append(
            f'{AVERAGE} ({backbone}): per seed, the mean over the '
            f'{len(names)} datasets {", ".join(names)}'
            + (f'; the published 11-dataset averages are not shown '
               f'(missing: {", ".join(missing)}).' if missing else '.'))
    if shown:
        lines += ['', 'Published figures shown:']
        for (dataset, backbone, method, k), p in sorted(shown.items()):
            src = SOURCES[p.source]
            what, selection = ((f'{k}-shot', src.protocol) if k else
                               ('zero-shot', 'none (nothing to select)'))
            lines.append(f'- {dataset}, {backbone}, {method}, {what}: '
                         f'{p.top1:.2f}. {p.source}: {src.citation}. '
                         f'Selection: {selection}.')
    keep_previous_tables(md_path, csv_path, rows)
    with open(md_path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    with open(csv_path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=csv_fields(shots))
        writer.writeheader()
        writer.writerows(rows)
    return md_path, csv_path


# -- plots -------------------------------------------------------------------


def draw_dataset(ax, dataset: str, table: Dict[Row, Dict[int, Stat]],
                 shots: Sequence[int], averaged: Dict[str, List[str]]
                 ) -> None:
    """One dataset's panel: top-1 vs shots (log2), a line with std error
    bars per (backbone,) method and protocol, published figures as grey
    crosses, zero-shot figures as dotted lines."""
    rows = [row for row in table if row[0] == dataset]
    methods = list(dict.fromkeys((b, m) for _, b, m, _ in rows))
    multi_backbone = len({b for b, _ in methods}) > 1
    protocols = list(dict.fromkeys(p for *_, p in rows))
    styles = ['-', '--', '-.', ':']
    papers: Dict[Tuple[str, str], List[Tuple[int, float]]] = {}
    for row in rows:
        _, backbone, method, protocol = row
        stats = table[row]
        colour = f'C{methods.index((backbone, method)) % 10}'
        name = f'{method}, {backbone}' if multi_backbone else method
        ks = [k for k in shots if k in stats]
        if ks:
            ax.errorbar(ks, [stats[k].mean for k in ks],
                        yerr=[stats[k].std or 0.0 for k in ks],
                        color=colour, marker='o', capsize=3,
                        linestyle=styles[protocols.index(protocol)
                                         % len(styles)],
                        label=f'{name} [{protocol}]')
        for k in shots:
            p = row_published(row, k, averaged)
            if p is not None:
                papers.setdefault((name, colour), [])
                if (k, p.top1) not in papers[(name, colour)]:
                    papers[(name, colour)].append((k, p.top1))
    for (name, colour), points in papers.items():
        values = {v for _, v in points}
        if base_method(name.split(', ')[0]) == ZERO_SHOT and len(values) == 1:
            ax.axhline(values.pop(), color=colour, linestyle=':',
                       label=f'{name} (paper)')
        else:
            ax.plot(*zip(*sorted(points)), color=colour, linestyle='none',
                    marker='x', markersize=9, label=f'{name} (paper)')
    ax.set_xscale('log', base=2)
    ax.minorticks_off()
    ax.set_xticks(list(shots), [str(k) for k in shots])
    ax.set_xlabel('shots per class')
    ax.set_ylabel('top-1 (%)')
    ax.set_title(dataset)
    ax.grid(alpha=0.3)
    ax.legend(fontsize='x-small')


def plot(table: Dict[Row, Dict[int, Stat]], shots: Sequence[int],
         work_dir: str, averaged: Optional[Dict[str, List[str]]] = None
         ) -> List[str]:
    """``results.png`` (a panel per dataset) and ``results_<dataset>.png``;
    nothing, with a message, without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print('matplotlib is not installed: no plots (pip install '
              'matplotlib); the tables are written.', flush=True)
        return []
    averaged = averaged or {}
    datasets = list(dict.fromkeys(d for d, *_ in table))
    if not datasets:
        return []
    paths = []
    cols = min(3, len(datasets))
    nrows = math.ceil(len(datasets) / cols)
    fig = Figure(figsize=(6 * cols, 4.5 * nrows))
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax, dataset in zip(axes, datasets):
        draw_dataset(ax, dataset, table, shots, averaged)
    for ax in axes[len(datasets):]:
        ax.set_visible(False)
    fig.tight_layout()
    paths.append(osp.join(work_dir, 'results.png'))
    fig.savefig(paths[-1], dpi=100)
    for dataset in datasets:
        fig = Figure(figsize=(7, 5))
        draw_dataset(fig.subplots(), dataset, table, shots, averaged)
        fig.tight_layout()
        name = re.sub(r'[^\w.-]', '_', dataset)
        paths.append(osp.join(work_dir, f'results_{name}.png'))
        fig.savefig(paths[-1], dpi=100)
    return paths


def report(work_dir: str, shots: Sequence[int],
           experiments: Sequence[Experiment] = ()) -> List[str]:
    """Tables and plots from every cell record under ``work_dir``."""
    records = load_records(work_dir, experiments)
    shots = sorted(set(shots) | {int(r['shots']) for r in records})
    table, averaged = collect(records, experiments)
    paths = list(write_tables(table, shots, work_dir, averaged,
                              declined_counts(records)))
    if any(table.values()):
        paths += plot(table, shots, work_dir, averaged)
    return paths


# -- tables of the generalisation settings -----------------------------------


def setting_values(records: Sequence[dict], setting: str
                   ) -> Dict[Row, Dict[int, Dict[int, Dict[str, float]]]]:
    """``{row: {shots: {seed: {column: top-1}}}}`` of a setting's records:
    columns base, new, H (base-to-new); the source dataset's top-1 under
    ``'source'`` and one per target (cross-dataset, domain shift)."""
    values: Dict[Row, Dict[int, Dict[int, Dict[str, float]]]] = {}
    for r in records:
        if r.get('setting') != setting:
            continue
        if setting == 'base_to_new':
            columns = dict(base=float(r['base']), new=float(r['new']),
                           H=float(r['H']))
        else:
            columns = dict(source=float(r['top1']))
            columns.update((name, float(t['top1']))
                           for name, t in (r.get('tests') or {}).items())
        values.setdefault(row_of(r), {}).setdefault(
            int(r['shots']), {})[int(r['seed'])] = columns
    return values


def b2n_averages(values: Dict[Row, Dict[int, Dict[int, Dict[str, float]]]]
                 ) -> Tuple[Dict[Row, Dict[int, Dict[int, Dict[str, float]]]],
                            Dict[str, List[str]]]:
    """The :data:`AVERAGE` rows of base-to-new and the datasets each
    backbone averages: per seed done on every dataset present (at least
    two), base and new averaged over the datasets and H = their harmonic
    mean (as CoCoOp's and MaPLe's average rows)."""
    from tip_adapter_mm.evaluation import harmonic_mean
    datasets: Dict[str, List[str]] = {}
    for dataset, backbone, _, _ in values:
        if dataset not in datasets.setdefault(backbone, []):
            datasets[backbone].append(dataset)
    datasets = {b: sorted(d) for b, d in datasets.items() if len(d) > 1}
    out: Dict[Row, Dict[int, Dict[int, Dict[str, float]]]] = {}
    for backbone, method, protocol in {(b, m, p) for _, b, m, p in values
                                       if b in datasets}:
        rows = [values.get((d, backbone, method, protocol), {})
                for d in datasets[backbone]]
        for k in set.intersection(*(set(r) for r in rows)):
            for s in sorted(set.intersection(*(set(r[k]) for r in rows))):
                base = statistics.fmean(r[k][s]['base'] for r in rows)
                new = statistics.fmean(r[k][s]['new'] for r in rows)
                out.setdefault((AVERAGE, backbone, method, protocol),
                               {}).setdefault(k, {})[s] = dict(
                                   base=base, new=new,
                                   H=harmonic_mean(base, new))
    return out, datasets


def published_b2n(row: Row, shots: int,
                  averaged: Dict[str, List[str]]) -> Optional[PublishedB2N]:
    """The published base-to-new figure beside a row: only the
    11-dataset averages are known (:data:`PAPER_B2N`), shown on an average
    row over exactly those datasets; zero-shot CLIP's for any shots."""
    dataset, backbone, method, _ = row
    if dataset != AVERAGE or sorted(averaged.get(backbone, ())) != sorted(
            BENCHMARK_DATASETS):
        return None
    method, backbone = base_method(method), paper_backbone(backbone)
    return PAPER_B2N.get((AVERAGE, method, backbone, shots)) or (
        PAPER_B2N.get((AVERAGE, method, backbone, 0))
        if method == ZERO_SHOT else None)


def setting_columns(setting: str,
                    values: Dict[Row, Dict[int, Dict[int, Dict[str, float]]]]
                    ) -> List[str]:
    """The value columns of a setting's table: base, new, H; or source,
    each target (sorted) and their average."""
    if setting == 'base_to_new':
        return ['base', 'new', 'H']
    targets = sorted({c for by_shots in values.values()
                      for by_seed in by_shots.values()
                      for columns in by_seed.values() for c in columns}
                     - {'source', 'average'})
    return ['source'] + targets + ['average']


def write_setting_tables(setting: str, work_dir: str,
                         records: Sequence[dict],
                         experiments: Sequence[Experiment] = ()
                         ) -> Tuple[str, str]:
    """``results.md`` and ``results.csv`` of a generalisation setting under
    ``work_dir`` (``<work-dir>/<setting>``): a line per row and shots with
    mean ± sample std (number of seeds) of each column; base-to-new adds the
    average rows and the published figures with their sources."""
    values = setting_values(records, setting)
    averaged: Dict[str, List[str]] = {}
    if setting == 'base_to_new':
        average, averaged = b2n_averages(values)
        values.update(average)
    else:  # the mean over the targets of each seed
        for by_shots in values.values():
            for by_seed in by_shots.values():
                for columns in by_seed.values():
                    targets = [v for c, v in columns.items()
                               if c != 'source']
                    columns['average'] = statistics.fmean(targets)
    columns = setting_columns(setting, values)
    shots = sorted({k for by_shots in values.values() for k in by_shots})
    rows = order_rows(list(values), records, experiments)
    md_path = osp.join(work_dir, 'results.md')
    csv_path = osp.join(work_dir, 'results.csv')
    first = 'dataset' if setting == 'base_to_new' else 'source'
    lines = [f'| {first} | backbone | method | protocol | shots | '
             + ' | '.join(columns) + ' |',
             '|---|---|---|---|---|' + '---|' * len(columns)]
    fields = ['dataset', 'backbone', 'method', 'protocol'] + [
        f'{k}shot_{c}_{what}' for k in shots for c in columns
        for what in ('mean', 'std')] + [f'{k}shot_n' for k in shots]
    if setting == 'base_to_new':
        fields += [f'{k}shot_paper_{c}' for k in shots
                   for c in ('base', 'new', 'H', 'source')]
    out_rows = []
    shown: Dict[Tuple[str, str, int], PublishedB2N] = {}
    for row in rows:
        dataset, backbone, method, protocol = row
        out: Dict[str, Any] = dict(dataset=dataset, backbone=backbone,
                                   method=method, protocol=protocol)
        for k in shots:
            by_seed = values[row].get(k, {})
            out[f'{k}shot_n'] = len(by_seed)
            stats = {c: summarise([v[c] for v in by_seed.values()
                                   if c in v])
                     for c in columns
                     if any(c in v for v in by_seed.values())}
            for c in columns:
                stat = stats.get(c)
                out[f'{k}shot_{c}_mean'] = ('' if stat is None
                                            else round(stat.mean, 4))
                out[f'{k}shot_{c}_std'] = (
                    '' if stat is None or stat.std is None
                    else round(stat.std, 4))
            paper = (published_b2n(row, k, averaged)
                     if setting == 'base_to_new' else None)
            if setting == 'base_to_new':
                for c in ('base', 'new', 'H', 'source'):
                    out[f'{k}shot_paper_{c}'] = ('' if paper is None
                                                 else getattr(paper, c))
            if not by_seed:
                continue
            cells = [format_cell(stats.get(c), None) for c in columns]
            if paper is not None:
                cells[-1] += f' [paper {paper.H:.2f}, {paper.source}]'
                shown[(backbone, base_method(method), k)] = paper
            lines.append(f'| {dataset} | {backbone} | {method} | '
                         f'{protocol} | {k} | ' + ' | '.join(cells) + ' |')
        out_rows.append(out)
    if setting == 'base_to_new':
        lines += ['', 'Base-to-new (docs/generalization.md): top-1 (%) on '
                  'the test images of the base classes (the cell\'s own '
                  'run) and of the new classes (the _new config tested '
                  'with its model); H = 2 base new / (base + new) per '
                  'seed; mean ± sample std (ddof=1) (number of seeds). '
                  f'{AVERAGE}: per seed, base and new averaged over the '
                  'datasets and H of those two.']
        for backbone, names in sorted(averaged.items()):
            missing = sorted(set(BENCHMARK_DATASETS) - set(names))
            lines.append(
                f'{AVERAGE} ({backbone}): the {len(names)} datasets '
                f'{", ".join(names)}' + (
                    f'; the published 11-dataset averages are not shown '
                    f'(missing: {", ".join(missing)}).' if missing else '.'))
    else:
        lines += ['', f'{setting.replace("_", "-")} '
                  '(docs/generalization.md): top-1 (%) of the model '
                  "adapted on the source dataset (the cell's own run) "
                  'and of the same model tested on each target config; '
                  'average: the mean over the targets per seed; mean ± '
                  'sample std (ddof=1) (number of seeds).']
    if shown:
        lines += ['', 'Published figures shown (11-dataset averages):']
        for (backbone, method, k), p in sorted(shown.items()):
            src = SOURCES[p.source]
            lines.append(
                f'- {backbone}, {method}, {k} shots: base {p.base:.2f}, '
                f'new {p.new:.2f}, H {p.H:.2f}. {p.source}: '
                f'{src.citation}. Selection: {src.protocol}.')
    keep_previous_tables(md_path, csv_path, out_rows)
    with open(md_path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    with open(csv_path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(out_rows)
    return md_path, csv_path


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the sweep, write the tables and the plots; 1 if a cell failed."""
    quiet_warnings()
    args = parse_args(argv)
    user_options = parse_cfg_options(args.cfg_options)
    experiments = [load_experiment(c, user_options, args.setting)
                   for c in args.configs]
    check_experiments(experiments)
    for exp in experiments:
        check_user_options(user_options, exp)
    shots = list(dict.fromkeys(args.shots))
    seeds = list(dict.fromkeys(args.seeds))
    protocols = (list(dict.fromkeys(args.protocols))
                 if args.protocols else None)
    few_shot = args.setting == 'few_shot'
    root = (args.work_dir if few_shot else
            osp.join(args.work_dir, args.setting))
    cells = make_cells(experiments, shots, seeds, root, protocols,
                       osp.join(args.work_dir, 'feature_cache'))
    what = (f'{len(protocols)} protocols' if protocols else
            "each config's protocol")
    print(f'Sweep ({args.setting}): {len(experiments)} configs x '
          f'{len(shots)} shots x {len(seeds)} seeds x {what} = '
          f'{len(cells)} cells in {root}', flush=True)
    failed = run_sweep(cells, args)
    if args.dry_run:
        return 0
    os.makedirs(root, exist_ok=True)
    paths = (report(root, shots, experiments) if few_shot else list(
        write_setting_tables(args.setting, root,
                             load_records(root, experiments), experiments)))
    print('Wrote ' + ', '.join(paths), flush=True)
    if failed:
        print(f'{len(failed)} of {len(cells)} cells failed: '
              + '; '.join(c.name for c in failed), flush=True)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
