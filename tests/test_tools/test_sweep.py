"""tools/sweep.py: a 2 methods x 2 shots x 2 seeds x 2 protocols sweep on a
tiny CLIP (16 cells), its records, tables, plots, shared feature store
(every image encoded once for the whole sweep, counted by a counting
backbone), resumption and merging of later sweeps; the pieces alone."""
import csv
import json
import re
import sys
import time
from collections import Counter

import numpy as np
import pytest
from conftest import (CONFIGS, REPO, load_tool, python_tool, read_count_log,
                      run_tool, split_fingerprints, tiny_config)
from mmengine.config import Config

import tip_adapter_mm  # noqa: F401
from mmpretrain.registry import MODELS

SHOTS = (1, 2)
SEEDS = (1, 2)
PROTOCOLS = ('val', 'none')
CLASSES = 3
#: tiny_config's few_shot_cfg.augment_epoch; images in the val and test
#: folders; Tip-Adapter-F epochs.
VIEWS, NUM_VAL, NUM_TEST, EPOCHS = 3, 12, 15, 2
F_EXTRA = f"""
train_cfg = dict(max_epochs={EPOCHS}, global_batch_size=4)
"""
TINY = 'TinyCLIP-ViT-test'
METHODS = {'tip_tiny_4shot': 'Tip-Adapter',
           'tip_f_tiny_4shot': 'Tip-Adapter-F'}
VAL_TOP1 = re.compile(
    r'Epoch\(val\) \[(\d+)\]\[\d+/\d+\]\s+accuracy/top1: ([0-9.]+)')


def counting(count_file) -> str:
    """Config lines that swap in the counting backbone (conftest's
    ``counting_plugin``): one log line per encoded image."""
    return f"""
custom_imports = dict(imports=['tip_adapter_mm', 'counting_backbone'])
model['backbone'] = dict(clip, type='CountingOpenCLIPVisualBackbone',
                         count_file={str(count_file)!r})
"""


sweep = load_tool('sweep')


def sweep_args(configs, work_dir, shots=SHOTS, protocols=PROTOCOLS):
    return python_tool(
        'sweep.py', *map(str, configs), '--shots', *map(str, shots),
        '--seeds', *map(str, SEEDS), '--protocols', *protocols,
        '--work-dir', str(work_dir))


@pytest.fixture(scope='module')
def swept(tiny_clip, image_folders, counting_plugin, tmp_path_factory):
    """Tip-Adapter and Tip-Adapter-F x 2 shots x 2 seeds x protocols val
    and none, every image the encoder sees logged to ``count_file``."""
    root = tmp_path_factory.mktemp('sweep')
    count_file = root / 'encoded.log'
    configs = [
        tiny_config(root / 'tip_tiny_4shot.py', tiny_clip, image_folders,
                    extra=counting(count_file)),
        tiny_config(root / 'tip_f_tiny_4shot.py', tiny_clip, image_folders,
                    schedule='tip_adapter_f',
                    extra=F_EXTRA + counting(count_file)),
    ]
    work_dir = root / 'work'
    output = run_tool(sweep_args(configs, work_dir), timeout=1800,
                      python_path=str(counting_plugin))
    return configs, work_dir, output, count_file


def cell_results(work_dir):
    """{(stem, shots, seed, protocol): record} from the per-cell JSONs."""
    results = {}
    for path in work_dir.glob('*/shots*_seed*/sweep_result.json'):
        r = json.loads(path.read_text())
        assert path.parent.name == (f"shots{r['shots']}_seed{r['seed']}_"
                                    f"{r['protocol']}")
        assert path.parent.parent.name == r['stem']
        results[(r['stem'], r['shots'], r['seed'], r['protocol'])] = r
    return results


def all_cells(configs):
    return {(c.stem, k, s, p) for c in configs for k in SHOTS for s in SEEDS
            for p in PROTOCOLS}


def test_every_cell_runs_once_and_saves_its_record(swept):
    configs, work_dir, output, _ = swept
    assert output.count(': run\n') == 16
    assert 'skip' not in output and 'FAILED' not in output
    results = cell_results(work_dir)
    assert set(results) == all_cells(configs)
    head = Config.fromfile(str(configs[0]),
                           import_custom_modules=False).model.head
    for (stem, k, s, protocol), r in results.items():
        trains = stem.startswith('tip_f_')
        assert r['config'] == str(configs[trains])
        assert r['method'] == METHODS[stem]
        assert (r['dataset'], r['backbone'], r['trains']) == ('tiny', TINY,
                                                              trains)
        assert 0.0 <= r['top1'] <= 100.0
        assert r['wall_time_s'] > 0
        cell = work_dir / stem / f'shots{k}_seed{s}_{protocol}'
        # The test top-1 is the last test line of the cell's log.
        log = (cell / 'sweep_cell.log').read_text()
        last = re.findall(r'Epoch\(test\).*?accuracy/top1: ([0-9.]+)', log)
        assert r['top1'] == float(last[-1])
        # The right tool, with the cell's shots, seed, protocol and store.
        assert r['command'][1].endswith('train.py' if trains else 'test.py')
        for option in (f'fewshot_dataloader.dataset.num_shots={k}',
                       f'fewshot_dataloader.dataset.seed={s}',
                       f'few_shot_cfg.protocol={protocol}',
                       f"few_shot_cfg.feature_dir={work_dir / 'feature_cache'}"
                       ):
            assert option in r['command']
        # Training-free cells saved their adapted model for the record and
        # it was removed after (no --keep-models).
        assert ('--save-model' in r['command']) == (not trains)
        assert not (cell / sweep.ADAPTED_MODEL).exists()
        assert set(r['hyperparameters']) == {'alpha', 'beta'}
        if protocol == 'val':
            # Searched on the 12 val images; the record holds what was
            # applied: the best point of the search report.
            assert r['searched'] is True
            assert r['search']['num_samples'] == NUM_VAL
            assert r['hyperparameters'] == pytest.approx(
                r['search']['best'], abs=1e-9)
        else:
            # No search: the validation-free values (the constructor's).
            assert r['searched'] is False and r['search'] is None
            assert r['hyperparameters'] == {'alpha': float(head.alpha),
                                            'beta': float(head.beta)}
            assert 'Epoch(val)' not in log
        if not trains:
            assert r['selected_epoch'] is None and r['epoch_rule'] is None
        elif protocol == 'val':
            # The first epoch with the highest validation top-1.
            val = [float(v) for _, v in VAL_TOP1.findall(log)]
            assert [int(e) for e, _ in VAL_TOP1.findall(log)] == list(
                range(1, EPOCHS + 1))
            assert r['selected_epoch'] == 1 + int(np.argmax(val))
            assert r['epoch_rule'] == 'best on val'
        else:
            assert (r['selected_epoch'], r['epoch_rule']) == (EPOCHS, 'last')
    for stem in METHODS:
        log = (work_dir / stem / 'shots2_seed1_val/sweep_cell.log').read_text()
        assert ('TipAdapterHead fitted on 6 few-shot images x 3 augmented '
                'views (features of dim 32)') in log


def cell_logs(work_dir, configs):
    """{(stem, shots, seed, protocol): the cell's output}."""
    return {(c.stem, k, s, p): (work_dir / c.stem / f'shots{k}_seed{s}_{p}'
                                / 'sweep_cell.log').read_text()
            for c in configs for k in SHOTS for s in SEEDS for p in PROTOCOLS}


def test_one_feature_store_and_the_same_shots_for_every_cell(swept):
    configs, work_dir, _, _ = swept
    store = work_dir / 'feature_cache'
    # One entry per split for the whole sweep, one set of support views per
    # (shots, seed) for both methods and both protocols.
    assert len(list(store.glob('test_*.pth'))) == 1
    assert len(list(store.glob('val_*.pth'))) == 1
    views = sorted(p.name for p in store.glob('support_views_*.pth'))
    assert len(views) == len(SHOTS) * len(SEEDS)
    assert len(list(store.glob('*.pth'))) == 2 + len(views)
    assert not list(work_dir.glob('*/feature_cache'))
    assert not list(work_dir.glob('*/*/feature_cache'))
    # Every cell of a (shots, seed), whatever its method or protocol, fitted
    # on the same stored entry; each (shots, seed) has its own.
    results = cell_results(work_dir)
    entries = {}
    for (_, k, s, _), r in results.items():
        entries.setdefault((k, s), set()).add(r['support_views'])
    assert all(len(e) == 1 for e in entries.values()), entries
    assert sorted(e for (e, ) in entries.values()) == views
    # ... and that entry's images are the draw of (shots, seed).
    for (k, s), (entry, ) in entries.items():
        described = json.loads((store / entry).with_suffix('.json')
                               .read_text())
        text = json.dumps(described)
        assert f'"num_shots": {k}' in text and f'"seed": {s}' in text
    logs = cell_logs(work_dir, configs)
    for k in SHOTS:
        for s in SEEDS:
            what = f'{VIEWS} augmented views of {k * CLASSES} few-shot images'
            cells = [key for key in logs if key[1:3] == (k, s)]
            encoded = [c for c in cells if f'Encoding {what}' in logs[c]]
            loaded = [c for c in cells
                      if f'Loaded the features of {what}' in logs[c]]
            assert len(encoded) == 1 and len(loaded) == len(cells) - 1
    # The test split is encoded by one cell and read by all others; the val
    # split only by cells that select on it.
    for split, size, users in (('test', NUM_TEST, set(logs)),
                               ('val', NUM_VAL, {c for c in logs
                                                 if c[3] == 'val'})):
        encoded = [c for c in logs if f'Encoding {size} {split} images'
                   in logs[c]]
        loaded = [c for c in logs if f'Loaded the features of {size} '
                  f'{split} images' in logs[c]]
        assert len(encoded) == 1, (split, encoded)
        assert set(encoded + loaded) == users, split


def test_each_image_is_encoded_once_over_the_whole_sweep(swept):
    configs, _, _, count_file = swept
    lines = read_count_log(count_file)
    test = split_fingerprints(configs[0], 'test')
    val = split_fingerprints(configs[0], 'val')
    assert sum(test.values()) == len(test) == NUM_TEST
    assert sum(val.values()) == len(val) == NUM_VAL
    # 16 cells: each test image and each val image went through the
    # encoder exactly once.
    assert Counter(line for line in lines if line in test) == test
    assert Counter(line for line in lines if line in val) == val
    # The rest are the augmented views of the few-shot images: VIEWS views
    # of shots x 3 classes per (shots, seed), once for both methods and
    # both protocols (the Tip-Adapter-F cells train on the stored views).
    views = sum(VIEWS * k * CLASSES for k in SHOTS for _ in SEEDS)
    assert len(lines) == views + NUM_VAL + NUM_TEST


def expected_stats(work_dir):
    """{(method, protocol, shots): (mean, sample std, n)} from the
    records."""
    by_cell = {}
    for (_, k, _, p), r in cell_results(work_dir).items():
        by_cell.setdefault((r['method'], p, k), []).append(r['top1'])
    return {key: (float(np.mean(v)), float(np.std(v, ddof=1)), len(v))
            for key, v in by_cell.items()}


def test_tables_hold_mean_and_std_over_seeds(swept):
    _, work_dir, _, _ = swept
    expected = expected_stats(work_dir)
    with open(work_dir / 'results.csv') as f:
        rows = list(csv.DictReader(f))
    assert [(r['dataset'], r['backbone'], r['method'], r['protocol'])
            for r in rows] == [('tiny', TINY, m, p) for m in METHODS.values()
                               for p in PROTOCOLS]
    assert list(rows[0]) == ['dataset', 'backbone', 'method', 'protocol'] + [
        f'{k}shot_{c}' for k in SHOTS
        for c in ('mean', 'std', 'n', 'paper', 'paper_source')]
    md = (work_dir / 'results.md').read_text().splitlines()
    assert md[0] == ('| dataset | backbone | method | protocol | 1 shot | '
                     '2 shot |')
    for row, line in zip(rows, md[2:6], strict=True):
        cells = [c.strip() for c in line.strip('|').split('|')]
        assert cells[:4] == [row['dataset'], row['backbone'], row['method'],
                             row['protocol']]
        for k, cell in zip(SHOTS, cells[4:]):
            mean, std, n = expected[(row['method'], row['protocol'], k)]
            assert float(row[f'{k}shot_mean']) == pytest.approx(mean,
                                                                abs=1e-4)
            assert float(row[f'{k}shot_std']) == pytest.approx(std, abs=1e-4)
            assert int(row[f'{k}shot_n']) == n == len(SEEDS)
            assert row[f'{k}shot_paper'] == ''  # no paper figure for 'tiny'
            assert cell == f'{mean:.2f} ± {std:.2f} ({n})'
    assert 'average' not in (work_dir / 'results.md').read_text()
    for name in ('results.png', 'results_tiny.png'):
        png = (work_dir / name).read_bytes()
        assert png.startswith(b'\x89PNG\r\n\x1a\n')


def tables(work_dir):
    return [(work_dir / n).read_text() for n in ('results.md', 'results.csv')]


def test_second_run_skips_every_cell(swept, counting_plugin):
    configs, work_dir, _, count_file = swept
    results = sorted(work_dir.glob('*/shots*_seed*/sweep_result.json'))
    stamps = [p.stat().st_mtime_ns for p in results]
    before = tables(work_dir)
    encoded = read_count_log(count_file)
    start = time.time()
    output = run_tool(sweep_args(configs, work_dir), timeout=300,
                      python_path=str(counting_plugin))
    elapsed = time.time() - start
    assert read_count_log(count_file) == encoded  # nothing encoded
    assert output.count('skip (done') == 16
    assert ': run' not in output
    assert [p.stat().st_mtime_ns for p in results] == stamps
    assert not list(work_dir.glob('*/shots*_seed*/*.tmp*'))
    assert tables(work_dir) == before
    assert elapsed < 30, elapsed  # no cell ran (each takes several seconds)


def test_a_smaller_sweep_into_the_same_dir_keeps_every_row(
        swept, counting_plugin):
    """The tables are rebuilt from every record on disk: a sweep of one
    config, one shot count and one protocol keeps the other rows."""
    configs, work_dir, _, _ = swept
    before = tables(work_dir)
    output = run_tool(sweep_args(configs[:1], work_dir, shots=(1, ),
                                 protocols=('val', )), timeout=300,
                      python_path=str(counting_plugin))
    assert output.count('skip (done') == len(SEEDS)
    assert tables(work_dir) == before
    assert not list(work_dir.glob('results.*.csv'))  # nothing was lost


# The pieces, without running a cell.


def test_method_names_come_from_the_head_classes():
    # The table name of each head class; Tip-Adapter-F when a config trains
    # Tip-Adapter.
    for head, name in [('TipAdapterHead', 'Tip-Adapter'), ('APEHead', 'APE'),
                       ('GDAHead', 'GDA'), ('NCMHead', 'NCM'),
                       ('ZeroShotHead', 'Zero-shot CLIP'),
                       ('CacheOnlyHead', 'Cache only')]:
        assert sweep.method_name(head, False) == name
        assert MODELS.get(head).method_name == name
    assert sweep.method_name('TipAdapterHead', True) == 'Tip-Adapter-F'
    assert sweep.method_name('CacheOnlyHead', True) == 'Cache only-F'
    # The registry wins over the file name.
    assert sweep.method_name('GDAHead', False, 'clap_dtd_16shot') == 'GDA'


@pytest.mark.parametrize('prefix,name', [
    ('zero_shot', 'Zero-shot CLIP'), ('tip', 'Tip-Adapter'),
    ('tip_f', 'Tip-Adapter-F'), ('ape', 'APE'), ('gda', 'GDA'),
    ('linear_probe', 'Linear probe'), ('lp_plus_plus', 'LP++'),
    ('clap', 'CLAP'), ('proker', 'ProKeR'), ('clip_adapter', 'CLIP-Adapter'),
    ('taskres', 'TaskRes'), ('prolip', 'ProLIP'), ('ncm', 'NCM'),
    ('cache_only', 'Cache only'), ('cache_only_f', 'Cache only-F')])
def test_method_names_from_the_file_name_without_a_head_class(prefix, name):
    stem = f'{prefix}_fgvc_aircraft_16shot'
    method = sweep.method_name('NotRegisteredHead', False, stem)
    assert method == name
    # A method that always trains keeps its name when the config trains.
    if name not in sweep.FINE_TUNED:
        assert sweep.method_name('NotRegisteredHead', True, stem) == name
    assert sweep.names_from_stem(stem, method) == ('fgvc_aircraft', name)
    assert sweep.names_from_stem(f'{prefix}_dtd_16shot_long', method) == (
        'dtd', f'{name} (long)')


def test_names_come_from_the_config_file_name():
    assert sweep.names_from_stem('tip_imagenet_16shot', 'Tip-Adapter') == (
        'imagenet', 'Tip-Adapter')
    assert sweep.names_from_stem('tip_f_imagenet_16shot',
                                 'Tip-Adapter-F') == ('imagenet',
                                                      'Tip-Adapter-F')
    assert sweep.names_from_stem('tip_f_imagenet_16shot_reencode',
                                 'Tip-Adapter-F') == (
                                     'imagenet', 'Tip-Adapter-F (reencode)')
    assert sweep.names_from_stem('my_dataset', 'Tip-Adapter') == (
        'my_dataset', 'Tip-Adapter')
    assert sweep.names_from_stem('gda_imagenet_16shot', 'GDA') == (
        'imagenet', 'GDA')
    assert sweep.names_from_stem('ape_dtd_16shot', 'APE') == ('dtd', 'APE')
    # The config's dataset_name wins over the file name.
    assert sweep.names_from_stem('my_run', 'APE', 'dtd') == ('dtd', 'APE')
    # Method from the head class, dataset from the config's dataset_name.
    for config, expected in [
        ('gda_imagenet_16shot.py', ('imagenet', 'GDA')),
        ('ape_imagenet_16shot.py', ('imagenet', 'APE')),
        ('ncm_imagenet_16shot.py', ('imagenet', 'NCM')),
        ('zero_shot_imagenet.py', ('imagenet', 'Zero-shot CLIP')),
        ('tip_dtd_16shot.py', ('dtd', 'Tip-Adapter')),
        ('tip_f_fgvc_aircraft_16shot.py', ('fgvc_aircraft',
                                           'Tip-Adapter-F')),
    ]:
        exp = sweep.load_experiment(str(CONFIGS / config), {})
        assert (exp.dataset, exp.method) == expected
        assert exp.protocol == 'val'
    # MMPretrain backbones: the cache alone, two caches, MMPretrain towers
    for config, expected in [
        ('custom/cache_only_f_my_dataset_16shot_resnet50.py',
         ('my_dataset', 'Cache only-F (resnet50)', 'ResNet-50')),
        ('tip_imagenet_16shot_dual_cache_resnet50.py',
         ('imagenet', 'Tip-Adapter (dual_cache_resnet50)', 'RN50')),
        ('tip_imagenet_16shot_mmpretrain_rn50.py',
         ('imagenet', 'Tip-Adapter (mmpretrain_rn50)', 'ModifiedResNet-50')),
    ]:
        exp = sweep.load_experiment(str(CONFIGS / config), {})
        assert (exp.dataset, exp.method, exp.backbone) == expected
    # Only RN50 / ViT-B-16 through open_clip are the papers' backbones.
    assert sweep.paper_figure('imagenet', 'Tip-Adapter (mmpretrain_rn50)',
                              16, 'ModifiedResNet-50') is None
    # A config's own protocol is the default of its cells.
    exp = sweep.load_experiment(
        str(CONFIGS / 'tip_f_imagenet_16shot_reference_protocol.py'), {})
    assert exp.protocol == 'reference_test'


#: The published 16-shot figures (top-1 %) and their sources, as the
#: project's docs/results_sources.md lists them: (dataset, backbone) ->
#: {method: (figure, source)}.
PUBLISHED = {
    ('imagenet', 'RN50'): {
        'Zero-shot CLIP': (60.33, 'Tip paper'),
        'Tip-Adapter': (62.03, 'Tip paper'),
        'Tip-Adapter-F': (65.51, 'Tip paper'),
        'CLIP-Adapter': (63.59, 'Tip paper'), 'CoOp': (62.95, 'Tip paper'),
        'APE': (63.42, 'APE notebook'), 'GDA': (63.82, 'GDA logs')},
    ('imagenet', 'ViT-B/16'): {
        'Zero-shot CLIP': (68.73, 'Tip paper'),
        'Tip-Adapter': (70.75, 'Tip paper'),
        'Tip-Adapter-F': (73.69, 'Tip paper'),
        'CLIP-Adapter': (71.13, 'Tip paper'), 'CoOp': (71.92, 'Tip paper'),
        'APE': (72.17, 'APE notebook'), 'GDA': (72.24, 'GDA logs'),
        'CLIP-LoRA': (73.6, 'CLIP-LoRA paper')},
    ('average', 'RN50'): {
        'Zero-shot CLIP': (58.89, 'Tip exp.log'),
        'Tip-Adapter': (70.32, 'Tip exp.log'),
        'Tip-Adapter-F': (75.83, 'Tip exp.log'),
        'CLIP-Adapter': (74.44, 'Tip exp.log'),
        'APE': (73.36, 'APE notebook'), 'GDA': (76.05, 'GDA logs'),
        'ProLIP': (75.46, 'ProLIP paper'), 'CoOp': (73.45, 'APE notebook')},
    ('average', 'ViT-B/16'): {
        m: (v, 'CLIP-SVD README') for m, v in [
            ('Zero-shot CLIP', 65.36), ('Tip-Adapter', 76.44),
            ('Tip-Adapter-F', 81.15), ('CLIP-Adapter', 79.86),
            ('GDA', 81.70), ('Linear probe', 78.39), ('LP++', 80.32),
            ('ProKeR', 82.01), ('CoOp', 79.01), ('CoCoOp', 75.02),
            ('MaPLe', 81.79)]} | {'CLIP-LoRA': (83.0, 'CLIP-LoRA paper')},
}


def test_published_figures_carry_their_source():
    for (dataset, backbone), figures in PUBLISHED.items():
        for method, (top1, source) in figures.items():
            found = sweep.published(dataset, method, 16, backbone)
            assert (found.top1, found.source) == (top1, source), (
                dataset, backbone, method)
            # open_clip spells the backbone ViT-B-16
            assert sweep.published(dataset, method, 16, backbone.replace(
                '/', '-')) == found
    assert len(sweep.PAPER) == sum(map(len, PUBLISHED.values())) + 8
    # Every figure names a known source, and every source a protocol
    # (base-to-new figures included).
    assert {p.source for p in (*sweep.PAPER.values(),
                               *sweep.PAPER_B2N.values())} == set(
                                   sweep.SOURCES)
    assert all(s.citation and s.protocol for s in sweep.SOURCES.values())
    # Tip-Adapter paper, ImageNet RN50, by shots; zero-shot for any shots.
    for k, tip, tip_f in zip((1, 2, 4, 8), (60.70, 60.96, 60.98, 61.45),
                             (61.32, 61.69, 62.52, 64.00)):
        assert sweep.paper_figure('imagenet', 'Tip-Adapter', k, 'RN50') == tip
        assert sweep.paper_figure('imagenet', 'Tip-Adapter-F', k,
                                  'RN50') == tip_f
        assert sweep.paper_figure('imagenet', 'Zero-shot CLIP', k,
                                  'RN50') == 60.33
        assert sweep.paper_figure('imagenet', 'GDA', k, 'RN50') is None
    assert sweep.paper_figure('dtd', 'Tip-Adapter', 16, 'RN50') is None
    assert sweep.paper_figure('imagenet', 'Tip-Adapter', 16, 'RN101') is None


def test_trained_dual_cache_is_not_given_the_training_free_figure():
    exp = sweep.load_experiment(
        str(CONFIGS / 'tip_f_imagenet_16shot_dual_cache_resnet50.py'), {})
    assert exp.trains
    assert exp.method == 'Tip-Adapter-F (dual_cache_resnet50)'
    assert sweep.base_method(exp.method) == 'Tip-Adapter-F'
    assert sweep.paper_figure(exp.dataset, exp.method, 16,
                              exp.backbone) == 65.51


def test_commands_per_kind_of_config(tmp_path):
    args = sweep.parse_args([str(CONFIGS / 'tip_imagenet_16shot.py'),
                             '--work-dir', str(tmp_path)])
    assert args.protocols is None  # each config's own
    free, f, reencode = [
        sweep.load_experiment(str(CONFIGS / name), {})
        for name in ('tip_imagenet_16shot.py', 'tip_f_imagenet_16shot.py',
                     'tip_f_imagenet_16shot_reencode.py')]
    assert (free.trains, f.trains, reencode.trains) == (False, True, True)
    assert (free.reencode, f.reencode, reencode.reencode) == (False, False,
                                                              True)
    cells = sweep.make_cells([free, f, reencode], [8], [3], str(tmp_path))
    cmd_free, cmd_f, cmd_re = (sweep.cell_command(c, args) for c in cells)
    assert cmd_free[1].endswith('tools/test.py')
    assert cmd_f[1].endswith('tools/train.py')
    assert cmd_re[1].endswith('tools/train.py')
    # The training-free cell saves its adapted model for the record.
    saved = str(tmp_path / 'tip_imagenet_16shot/shots8_seed3_val/'
                'adapted_model.pth')
    assert cmd_free[cmd_free.index('--save-model') + 1] == saved
    assert '--save-model' not in cmd_f + cmd_re
    # One feature store for every config of the sweep.
    store = f'few_shot_cfg.feature_dir={tmp_path / "feature_cache"}'
    for cmd in (cmd_free, cmd_f, cmd_re):
        assert store in cmd
        assert 'fewshot_dataloader.dataset.num_shots=8' in cmd
        assert 'fewshot_dataloader.dataset.seed=3' in cmd
        assert 'few_shot_cfg.protocol=val' in cmd
        assert not any(o.startswith('custom_hooks') for o in cmd)
    for option in ('train_dataloader.dataset.num_shots=8',
                   'train_dataloader.dataset.seed=3'):
        assert option in cmd_re
    assert not any(o.startswith('train_dataloader') for o in cmd_free)
    assert not any(o.startswith('train_dataloader') for o in cmd_f)
    assert cells[2].work_dir == str(
        tmp_path / 'tip_f_imagenet_16shot_reencode' / 'shots8_seed3_val')
    args.gpus = 2
    dist = sweep.cell_command(cells[2], args)
    assert dist[:2] == ['bash', str(REPO / 'tools/dist_train.sh')]
    assert dist[3] == '2'
    assert store in dist
    dist_free = sweep.cell_command(cells[0], args)
    assert dist_free[:2] == ['bash', str(REPO / 'tools/dist_test.sh')]
    assert dist_free[3] == '2'
    # The protocol grid: a directory and an option per protocol, in order.
    grid = sweep.make_cells([free, f], [1, 2], [1], str(tmp_path),
                            ['kshot_val', 'none'])
    assert [(c.experiment.stem, c.protocol, c.shots) for c in grid] == [
        (e.stem, p, k) for e in (free, f) for p in ('kshot_val', 'none')
        for k in (1, 2)]
    for c in grid:
        assert c.extra['few_shot_cfg.protocol'] == c.protocol
        assert c.work_dir.endswith(f'shots{c.shots}_seed1_{c.protocol}')
    with pytest.raises(SystemExit):
        sweep.parse_args([free.config, '--protocols', 'test'])


def test_record_of_the_tested_model(tmp_path):
    """Hyperparameters and epoch come from the checkpoint of the model the
    cell tested: the last epoch of a trained config without the search hook,
    else final_searched.pth with the best epoch it loaded."""
    import torch
    exp = sweep.load_experiment(str(CONFIGS / 'tip_f_imagenet_16shot.py'),
                                {})
    cell, = sweep.make_cells([exp], [4], [1], str(tmp_path))
    folder = tmp_path / exp.stem / 'shots4_seed1_val'
    folder.mkdir(parents=True)

    def save(name, alpha, beta, searched, hub=None):
        state = {'head.alpha': torch.tensor(alpha, dtype=torch.float64),
                 'head.cache.beta': torch.tensor(beta, dtype=torch.float64),
                 'head.is_searched': torch.tensor(searched)}
        torch.save(dict(state_dict=state, message_hub=hub or {}),
                   folder / name)

    assert sweep.head_record(cell)['hyperparameters'] is None
    save('epoch_2.pth', 3.0, 5.5, False)
    save('epoch_3.pth', 2.0, 4.5, False)
    assert sweep.head_record(cell) == dict(
        hyperparameters={'alpha': 2.0, 'beta': 4.5}, searched=False,
        selected_epoch=3, epoch_rule='last')
    best = str(folder / 'best_accuracy_top1_epoch_2.pth')
    save('final_searched.pth', 1.25, 7.0, True,
         dict(runtime_info=dict(best_ckpt=best)))
    assert sweep.head_record(cell) == dict(
        hyperparameters={'alpha': 1.25, 'beta': 7.0}, searched=True,
        selected_epoch=2, epoch_rule='best on val')


def test_configs_must_run_on_the_few_shot_runner(tmp_path):
    """The sweep sets few_shot_cfg.feature_dir: a config on another runner
    would ignore it."""
    config = tmp_path / 'plain_runner.py'
    config.write_text(
        f"_base_ = [{str(CONFIGS / 'tip_imagenet_16shot.py')!r}]\n"
        "runner_type = 'Runner'\n")
    with pytest.raises(ValueError, match="runner_type must be "
                       "'FewShotRunner'"):
        sweep.load_experiment(str(config), {})


def test_options_the_sweep_sets_are_refused():
    exp = sweep.load_experiment(str(CONFIGS / 'tip_imagenet_16shot.py'), {})
    options = sweep.parse_cfg_options(
        ['fewshot_dataloader.dataset.seed=4', 'model.head.alpha=2'])
    with pytest.raises(ValueError, match='dataset.seed'):
        sweep.check_user_options(options, exp)
    for option in ('few_shot_cfg.feature_dir=/tmp/x',
                   'few_shot_cfg.protocol=none'):
        with pytest.raises(ValueError, match=option.split('=')[0]):
            sweep.check_user_options(sweep.parse_cfg_options([option]), exp)
    sweep.check_user_options({'model.head.alpha': 2.0}, exp)


def write_record(work_dir, stem, cell, **record):
    """A cell record as a sweep writes it, without running the cell."""
    folder = work_dir / stem / cell
    folder.mkdir(parents=True)
    sweep.write_json_atomic(str(folder / sweep.RESULT_FILE),
                            dict(stem=stem, **record))


def csv_rows(work_dir):
    with open(work_dir / 'results.csv') as f:
        return {(r['dataset'], r['backbone'], r['method'], r['protocol']): r
                for r in csv.DictReader(f)}


def test_mean_and_sample_std_over_the_seeds_done(tmp_path):
    exp = sweep.load_experiment(str(CONFIGS / 'tip_imagenet_16shot.py'), {})
    top1 = {(1, 1): 60.0, (1, 2): 61.5, (1, 3): 63.0, (4, 1): 70.25}
    for (k, s), v in top1.items():
        write_record(tmp_path, exp.stem, f'shots{k}_seed{s}_val',
                     dataset='imagenet', method='Tip-Adapter',
                     backbone='RN50', protocol='val', shots=k, seed=s, top1=v)
    table, averaged = sweep.collect(sweep.load_records(str(tmp_path)), [exp])
    assert averaged == {}
    stats = table[('imagenet', 'RN50', 'Tip-Adapter', 'val')]
    assert stats[1].mean == pytest.approx(61.5)
    assert stats[1].std == pytest.approx(1.5)  # ddof=1
    assert stats[1].n == 3
    assert (stats[4].mean, stats[4].std, stats[4].n) == (70.25, None, 1)
    assert sweep.format_cell(stats[1], None) == '61.50 ± 1.50 (3)'
    assert sweep.format_cell(stats[4], sweep.Published(61.45, 'Tip paper')) \
        == '70.25 ± n/a (1) [paper 61.45, Tip paper]'


def test_records_of_an_older_sweep_count_once(tmp_path):
    """Directories without a protocol (before protocols) count as 'val';
    where both layouts hold a cell, the newer layout's record wins."""
    exp = sweep.load_experiment(str(CONFIGS / 'tip_imagenet_16shot.py'), {})
    old = dict(dataset='imagenet', method='Tip-Adapter', shots=1, top1=50.0)
    write_record(tmp_path, exp.stem, 'shots1_seed1', seed=1, **old)
    write_record(tmp_path, exp.stem, 'shots1_seed2', seed=2,
                 **dict(old, top1=54.0))
    write_record(tmp_path, exp.stem, 'shots1_seed1_val', seed=1,
                 **dict(old, top1=60.0, protocol='val', backbone='RN50'))
    write_record(tmp_path, exp.stem, 'shots1_seed1_none', seed=1,
                 **dict(old, top1=40.0, protocol='none', backbone='RN50'))
    (tmp_path / exp.stem / 'notes').mkdir()  # not a cell: ignored
    table, _ = sweep.collect(sweep.load_records(str(tmp_path), [exp]), [exp])
    assert list(table) == [('imagenet', 'RN50', 'Tip-Adapter', 'val'),
                           ('imagenet', 'RN50', 'Tip-Adapter', 'none')]
    val = table[('imagenet', 'RN50', 'Tip-Adapter', 'val')][1]
    assert (val.mean, val.n) == (57.0, 2)  # 60 (new layout) and 54
    assert table[('imagenet', 'RN50', 'Tip-Adapter', 'none')][1].mean == 40


def test_average_rows_over_the_datasets_present(tmp_path):
    """Per seed, the mean over the datasets; mean ± std over those seeds;
    a method missing a dataset has no average; the published 11-dataset
    average only beside an average of the 11 datasets."""
    rng = np.random.default_rng(0)
    datasets = list(sweep.BENCHMARK_DATASETS)
    top1 = rng.uniform(40, 90, (len(datasets), 3))  # dataset x seed
    for d, dataset in enumerate(datasets):
        for s in range(3):
            for method, protocol, value in (
                    ('Tip-Adapter', 'val', top1[d, s]),
                    ('Tip-Adapter', 'none', top1[d, s] - 1),
                    ('GDA', 'val', 70.0)):
                if method == 'GDA' and dataset == 'dtd':
                    continue  # GDA lacks a dataset: no average for it
                write_record(tmp_path, f'{method}_{dataset}',
                             f'shots16_seed{s + 1}_{protocol}',
                             dataset=dataset, method=method,
                             backbone='RN50', protocol=protocol, shots=16,
                             seed=s + 1, top1=float(value))
    # Seed 3 of one dataset missing at 'none': its average uses seeds 1, 2.
    (tmp_path / 'Tip-Adapter_eurosat/shots16_seed3_none' /
     sweep.RESULT_FILE).unlink()
    sweep.report(str(tmp_path), [16])
    rows = csv_rows(tmp_path)
    per_seed = top1.mean(axis=0)
    val = rows[('average', 'RN50', 'Tip-Adapter', 'val')]
    assert float(val['16shot_mean']) == pytest.approx(per_seed.mean(),
                                                      abs=1e-4)
    assert float(val['16shot_std']) == pytest.approx(
        np.std(per_seed, ddof=1), abs=1e-4)
    assert int(val['16shot_n']) == 3
    assert (float(val['16shot_paper']), val['16shot_paper_source']) == (
        70.32, 'Tip exp.log')
    none = rows[('average', 'RN50', 'Tip-Adapter', 'none')]
    assert float(none['16shot_mean']) == pytest.approx(
        per_seed[:2].mean() - 1, abs=1e-4)
    assert int(none['16shot_n']) == 2
    assert ('average', 'RN50', 'GDA', 'val') not in rows
    # Average rows come last.
    assert [k[0] for k in rows][-2:] == ['average'] * 2
    md = (tmp_path / 'results.md').read_text()
    assert 'mean over the 11 datasets' in md
    assert ('- average, RN50, Tip-Adapter, 16-shot: 70.32. Tip exp.log: '
            in md)
    assert (tmp_path / 'results_average.png').exists()
    # Without ImageNet, the published 11-dataset average is not shown.
    for path in tmp_path.glob('*_imagenet/*/' + sweep.RESULT_FILE):
        path.unlink()
    sweep.report(str(tmp_path), [16])
    rows = csv_rows(tmp_path)
    assert rows[('average', 'RN50', 'Tip-Adapter', 'val')][
        '16shot_paper'] == ''
    others = np.delete(top1, datasets.index('imagenet'), axis=0)
    assert float(rows[('average', 'RN50', 'Tip-Adapter', 'val')][
        '16shot_mean']) == pytest.approx(others.mean(), abs=1e-4)
    assert 'missing: imagenet' in (tmp_path / 'results.md').read_text()
    # ... and the tables that had ImageNet rows were kept aside.
    kept = list(tmp_path.glob('results.*.csv'))
    assert len(kept) == 1 and len(list(tmp_path.glob('results.*.md'))) == 1
    with open(kept[0]) as f:
        assert any(r['dataset'] == 'imagenet' for r in csv.DictReader(f))


def test_paper_figures_beside_rn50_imagenet(tmp_path):
    stat = sweep.Stat(61.0, 0.5, 3)
    table = {('imagenet', 'RN50', 'Tip-Adapter', 'val'): {1: stat, 16: stat},
             ('imagenet', 'RN50', 'Tip-Adapter-F (reencode)', 'none'): {
                 16: stat},
             ('imagenet', 'RN50', 'Zero-shot CLIP', 'val'): {16: stat}}
    md, csv_path = sweep.write_tables(table, [1, 16], str(tmp_path))
    text = open(md).read()
    assert ('| imagenet | RN50 | Tip-Adapter | val | 61.00 ± 0.50 (3) '
            '[paper 60.70, Tip paper] | 61.00 ± 0.50 (3) [paper 62.03, '
            'Tip paper] |') in text
    assert ('| none | - [paper 61.32, Tip paper] | 61.00 ± 0.50 (3) '
            '[paper 65.51, Tip paper] |') in text
    assert ('| Zero-shot CLIP | val | - [paper 60.33, Tip paper] | '
            '61.00 ± 0.50 (3) [paper 60.33, Tip paper] |') in text
    assert text.count('- imagenet, RN50, Zero-shot CLIP, zero-shot: 60.33. '
                      'Tip paper: R. Zhang et al., Tip-Adapter, ECCV 2022, '
                      'arXiv 2207.09519. Selection: none') == 1
    assert '- imagenet, RN50, Tip-Adapter-F, 1-shot: 61.32. Tip paper' in text
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert rows[1]['1shot_mean'] == '' and rows[1]['1shot_n'] == '0'
    assert float(rows[1]['16shot_paper']) == 65.51
    assert rows[1]['16shot_paper_source'] == 'Tip paper'
    # Another backbone: no paper figure.
    other = {('imagenet', 'RN101', m, p): s for (_, _, m, p), s in
             table.items()}
    sweep.write_tables(other, [1, 16], str(tmp_path))
    assert 'paper' not in open(md).read().split('\n\n')[0]
    pngs = sweep.plot(table, [1, 16], str(tmp_path))
    assert [p.rsplit('/', 1)[1] for p in pngs] == ['results.png',
                                                   'results_imagenet.png']
    assert all(open(p, 'rb').read(4) == b'\x89PNG' for p in pngs)


def test_no_matplotlib_no_plots(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'matplotlib.figure', None)
    table = {('dtd', 'RN50', 'APE', 'val'): {1: sweep.Stat(50.0, None, 1)}}
    assert sweep.plot(table, [1], str(tmp_path)) == []
    assert 'matplotlib is not installed' in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


def test_tables_never_lose_rows_silently(tmp_path):
    stat = sweep.Stat(61.0, 0.5, 3)
    row = ('dtd', 'RN50', 'APE', 'val')
    md, csv_path = sweep.write_tables({row: {1: stat}}, [1], str(tmp_path))
    old = open(csv_path).read()
    # Same rows, more seeds or more rows: written in place.
    sweep.write_tables({row: {1: sweep.Stat(61.0, 0.5, 4)},
                        ('dtd', 'RN50', 'APE', 'none'): {1: stat}}, [1],
                       str(tmp_path))
    assert not list(tmp_path.glob('results.*.csv'))
    # Fewer seeds: the previous tables are kept aside first.
    time.sleep(1.1)  # another timestamp than any earlier copy
    sweep.write_tables({row: {1: sweep.Stat(61.0, 0.5, 2)}}, [1],
                       str(tmp_path))
    kept = list(tmp_path.glob('results.*.csv'))
    assert len(kept) == 1 and 'none' in kept[0].read_text()
    assert old != open(csv_path).read()
    # A table from before protocols and backbones: its rows were 'val'.
    with open(csv_path, 'w') as f:
        f.write('dataset,method,1shot_mean,1shot_std,1shot_n,1shot_paper\n'
                'dtd,APE,61.0,0.5,2,\n')
    assert not sweep.lost_rows(list(csv.DictReader(open(csv_path))), [
        dict(dataset='dtd', backbone='RN50', method='APE', protocol='val',
             **{'1shot_n': 2})])
    assert sweep.lost_rows(list(csv.DictReader(open(csv_path))), [
        dict(dataset='dtd', backbone='RN50', method='APE', protocol='none',
             **{'1shot_n': 2})])


def test_a_failed_cell_is_reported_and_the_others_go_on(tmp_path,
                                                        monkeypatch, capsys):
    exp = sweep.load_experiment(str(CONFIGS / 'tip_imagenet_16shot.py'), {})
    cells = sweep.make_cells([exp], [1, 2], [1], str(tmp_path))
    scripts = {
        cells[0].work_dir: 'import sys; print("boom"); sys.exit(3)',
        cells[1].work_dir: 'print("Epoch(test) [1/1]    accuracy/top1: '
                           '42.5000  data_time: 0.1")',
    }
    monkeypatch.setattr(sweep, 'cell_command', lambda cell, args: [
        sys.executable, '-c', scripts[cell.work_dir]])
    code = sweep.main([exp.config, '--shots', '1', '2', '--seeds', '1',
                       '--work-dir', str(tmp_path)])
    out = capsys.readouterr().out
    name = 'tip_imagenet_16shot shots=1 seed=1 protocol=val'
    assert code == 1
    assert f'FAILED {name} (exit status 3)' in out
    assert 'boom' in out and 'Command: ' in out
    assert f'1 of 2 cells failed: {name}' in out
    assert not (tmp_path / 'tip_imagenet_16shot/shots1_seed1_val/'
                'sweep_result.json').exists()
    done = json.loads(open(cells[1].result_path).read())
    assert (done['top1'], done['shots'], done['protocol']) == (42.5, 2,
                                                               'val')
    # No adapted model was saved (the stand-in did not write one).
    assert done['hyperparameters'] is None
    assert 'no ' in out and 'hyperparameters not recorded' in out
    # The table holds what is done; paper figures only for RN50 (it is).
    assert ('| imagenet | RN50 | Tip-Adapter | val | - [paper 60.70, '
            'Tip paper] | 42.50 ± n/a (1) [paper 60.96, Tip paper] |') in (
                tmp_path / 'results.md').read_text()


def test_protocols_are_the_builders():
    from tip_adapter_mm.engine.few_shot_builder import PROTOCOLS
    assert set(sweep.PROTOCOLS) == set(PROTOCOLS)
