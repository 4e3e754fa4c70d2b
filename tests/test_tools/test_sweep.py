"""tools/sweep.py: a 2 configs x 2 shots x 2 seeds sweep on a tiny CLIP,
its table, plot, shared feature store (every image encoded once for the
whole sweep, counted by a counting backbone) and resumption; the pieces
alone."""
import csv
import importlib.util
import json
import statistics
import sys
import time
from collections import Counter

import pytest
from conftest import (CONFIGS, REPO, python_tool, read_count_log, run_tool,
                      split_fingerprints, tiny_config)

import tip_adapter_mm  # noqa: F401
from mmpretrain.registry import MODELS

SHOTS = (1, 2)
SEEDS = (1, 2)
CLASSES = 3
#: tiny_config's few_shot_cfg.augment_epoch; images in the val and test
#: folders.
VIEWS, NUM_VAL, NUM_TEST = 3, 12, 15
F_EXTRA = """
train_cfg = dict(max_epochs=2, global_batch_size=4)
"""


def counting(count_file) -> str:
    """Config lines that swap in the counting backbone (conftest's
    ``counting_plugin``): one log line per encoded image."""
    return f"""
custom_imports = dict(imports=['tip_adapter_mm', 'counting_backbone'])
model['backbone'] = dict(clip, type='CountingOpenCLIPVisualBackbone',
                         count_file={str(count_file)!r})
"""


def load_sweep():
    spec = importlib.util.spec_from_file_location('sweep',
                                                  REPO / 'tools/sweep.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sweep = load_sweep()


def sweep_args(configs, work_dir):
    return python_tool(
        'sweep.py', *map(str, configs), '--shots', *map(str, SHOTS),
        '--seeds', *map(str, SEEDS), '--work-dir', str(work_dir))


@pytest.fixture(scope='module')
def swept(tiny_clip, image_folders, counting_plugin, tmp_path_factory):
    """Tip-Adapter and Tip-Adapter-F x 2 shots x 2 seeds, every image the
    encoder sees logged to ``count_file``."""
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
    """{(stem, shots, seed): result} from the per-cell JSON files."""
    results = {}
    for path in work_dir.glob('*/shots*_seed*/sweep_result.json'):
        r = json.loads(path.read_text())
        assert path.parent.name == f"shots{r['shots']}_seed{r['seed']}"
        results[(r['stem'], r['shots'], r['seed'])] = r
    return results


def test_every_cell_runs_once_and_saves_its_result(swept):
    configs, work_dir, output, _ = swept
    assert output.count(': run\n') == 8
    assert 'skip' not in output and 'FAILED' not in output
    results = cell_results(work_dir)
    assert set(results) == {(c.stem, k, s) for c in configs for k in SHOTS
                            for s in SEEDS}
    for (stem, _, _), r in results.items():
        assert 0.0 <= r['top1'] <= 100.0
        assert r['method'] == ('Tip-Adapter-F' if stem.startswith('tip_f_')
                               else 'Tip-Adapter')
        assert r['dataset'] == 'tiny'
        assert set(r['search']['best']) == {'alpha', 'beta'}
        assert r['search']['num_samples'] == 12  # the val split
        # The right tool, with the cell's shots and seed.
        tool = 'train.py' if stem.startswith('tip_f_') else 'test.py'
        assert r['command'][1].endswith(tool)
        assert f"fewshot_dataloader.dataset.num_shots={r['shots']}" \
            in r['command']
        assert f"fewshot_dataloader.dataset.seed={r['seed']}" in r['command']
        # Every cell points at the one shared feature store.
        assert (f"few_shot_cfg.feature_dir={work_dir / 'feature_cache'}"
                in r['command'])
    # Each cell's cache has shots x 3 classes keys.
    for stem in ('tip_tiny_4shot', 'tip_f_tiny_4shot'):
        log = (work_dir / stem / 'shots2_seed1/sweep_cell.log').read_text()
        assert ('TipAdapterHead fitted on 6 few-shot images x 3 augmented '
                'views (features of dim 32)') in log


def cell_logs(work_dir, configs):
    """{(stem, shots, seed): the cell's output}."""
    return {(c.stem, k, s): (work_dir / c.stem / f'shots{k}_seed{s}' /
                             'sweep_cell.log').read_text()
            for c in configs for k in SHOTS for s in SEEDS}


def test_one_feature_store_for_the_whole_sweep(swept):
    configs, work_dir, _, _ = swept
    store = work_dir / 'feature_cache'
    # One entry per split for the whole sweep (both methods, all shots and
    # seeds), one set of support views per (shots, seed) for both methods.
    assert len(list(store.glob('test_*.pth'))) == 1
    assert len(list(store.glob('val_*.pth'))) == 1
    assert len(list(store.glob('support_views_*.pth'))) == len(SHOTS) * len(
        SEEDS)
    assert len(list(store.glob('*.pth'))) == 2 + len(SHOTS) * len(SEEDS)
    # No per-config or per-cell store.
    assert not list(work_dir.glob('*/feature_cache'))
    assert not list(work_dir.glob('*/*/feature_cache'))
    logs = cell_logs(work_dir, configs)
    for split, size in (('val', NUM_VAL), ('test', NUM_TEST)):
        encoded = [key for key, log in logs.items()
                   if f'Encoding {size} {split} images' in log]
        assert len(encoded) == 1, (split, encoded)
        assert all(f'Loaded the features of {size} {split} images' in log
                   for key, log in logs.items() if key not in encoded)
    for k in SHOTS:
        for s in SEEDS:
            views = f'{VIEWS} augmented views of {k * CLASSES} few-shot images'
            encoded = [c.stem for c in configs
                       if f'Encoding {views}' in logs[(c.stem, k, s)]]
            loaded = [c.stem for c in configs
                      if f'Loaded the features of {views}'
                      in logs[(c.stem, k, s)]]
            assert len(encoded) == 1 and len(loaded) == 1, (k, s)
            assert set(encoded + loaded) == {c.stem for c in configs}


def test_each_image_is_encoded_once_over_the_whole_sweep(swept):
    configs, _, _, count_file = swept
    lines = read_count_log(count_file)
    test = split_fingerprints(configs[0], 'test')
    val = split_fingerprints(configs[0], 'val')
    assert sum(test.values()) == len(test) == NUM_TEST
    assert sum(val.values()) == len(val) == NUM_VAL
    # 8 cells, 4 of which also train and test: each test image went through
    # the encoder exactly once, and so did each val image.
    assert Counter(line for line in lines if line in test) == test
    assert Counter(line for line in lines if line in val) == val
    # The rest are the augmented views of the few-shot images: VIEWS views
    # of shots x 3 classes per (shots, seed), once for both methods (the
    # Tip-Adapter-F cells train on the stored views).
    views = sum(VIEWS * k * CLASSES for k in SHOTS for _ in SEEDS)
    assert len(lines) == views + NUM_VAL + NUM_TEST


def expected_stats(work_dir):
    """{(method, shots): (mean, sample std, n)} recomputed from the JSONs."""
    by_cell = {}
    for (stem, k, _), r in cell_results(work_dir).items():
        by_cell.setdefault((r['method'], k), []).append(r['top1'])
    return {key: (statistics.fmean(v), statistics.stdev(v), len(v))
            for key, v in by_cell.items()}


def test_tables_hold_mean_and_std_over_seeds(swept):
    _, work_dir, _, _ = swept
    expected = expected_stats(work_dir)
    with open(work_dir / 'results.csv') as f:
        rows = list(csv.DictReader(f))
    assert [(r['dataset'], r['method']) for r in rows] == [
        ('tiny', 'Tip-Adapter'), ('tiny', 'Tip-Adapter-F')]
    assert list(rows[0]) == ['dataset', 'method'] + [
        f'{k}shot_{c}' for k in SHOTS for c in ('mean', 'std', 'n', 'paper')]
    md = (work_dir / 'results.md').read_text().splitlines()
    assert md[0] == '| dataset | method | 1 shot | 2 shot |'
    for row, line in zip(rows, md[2:4]):
        cells = [c.strip() for c in line.strip('|').split('|')]
        assert cells[:2] == [row['dataset'], row['method']]
        for k, cell in zip(SHOTS, cells[2:]):
            mean, std, n = expected[(row['method'], k)]
            assert float(row[f'{k}shot_mean']) == pytest.approx(mean,
                                                                abs=1e-4)
            assert float(row[f'{k}shot_std']) == pytest.approx(std, abs=1e-4)
            assert int(row[f'{k}shot_n']) == n == len(SEEDS)
            assert row[f'{k}shot_paper'] == ''  # no paper figure for 'tiny'
            assert cell == f'{mean:.2f} ± {std:.2f} ({n})'
    png = (work_dir / 'results.png').read_bytes()
    assert png.startswith(b'\x89PNG\r\n\x1a\n')


def test_second_run_skips_every_cell(swept, counting_plugin):
    configs, work_dir, _, count_file = swept
    results = sorted(work_dir.glob('*/shots*_seed*/sweep_result.json'))
    stamps = [p.stat().st_mtime_ns for p in results]
    tables = [(work_dir / n).read_text() for n in ('results.md',
                                                   'results.csv')]
    encoded = read_count_log(count_file)
    start = time.time()
    output = run_tool(sweep_args(configs, work_dir), timeout=300,
                      python_path=str(counting_plugin))
    elapsed = time.time() - start
    assert read_count_log(count_file) == encoded  # nothing encoded
    assert output.count('skip (done') == 8
    assert ': run' not in output
    assert [p.stat().st_mtime_ns for p in results] == stamps
    assert not list(work_dir.glob('*/shots*_seed*/*.tmp*'))
    assert tables == [(work_dir / n).read_text() for n in ('results.md',
                                                           'results.csv')]
    assert elapsed < 30, elapsed  # no cell ran (each takes several seconds)


# The pieces, without running a cell.


def test_method_names_come_from_the_head_classes():
    # The table name of each head class, '-F' when the config trains it.
    for head, name in [('TipAdapterHead', 'Tip-Adapter'), ('APEHead', 'APE'),
                       ('GDAHead', 'GDA'), ('NCMHead', 'NCM'),
                       ('ZeroShotHead', 'Zero-shot CLIP'),
                       ('CacheOnlyHead', 'Cache only')]:
        assert sweep.method_name(head, False) == name
        assert MODELS.get(head).method_name == name
    assert sweep.method_name('TipAdapterHead', True) == 'Tip-Adapter-F'
    assert sweep.method_name('CacheOnlyHead', True) == 'Cache only-F'


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
    assert sweep.paper_figure('imagenet', 'GDA', 16, 'RN50') == 63.82
    assert sweep.paper_figure('imagenet', 'APE', 16, 'RN50') == 63.42
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
    # Only RN50 through open_clip is the paper's backbone.
    assert sweep.paper_figure('imagenet', 'Tip-Adapter (mmpretrain_rn50)',
                              16, 'ModifiedResNet-50') is None


def test_trained_dual_cache_is_not_given_the_training_free_figure():
    exp = sweep.load_experiment(
        str(CONFIGS / 'tip_f_imagenet_16shot_dual_cache_resnet50.py'), {})
    assert exp.trains
    assert exp.method == 'Tip-Adapter-F (dual_cache_resnet50)'
    assert sweep.base_method(exp.method) == 'Tip-Adapter-F'
    assert sweep.paper_figure(exp.dataset, exp.method, 16,
                              exp.backbone) == sweep.PAPER[('imagenet',
                                                            'Tip-Adapter-F',
                                                            16)]


def test_commands_per_kind_of_config(tmp_path):
    args = sweep.parse_args([str(CONFIGS / 'tip_imagenet_16shot.py'),
                             '--work-dir', str(tmp_path)])
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
    # One feature store for every config of the sweep.
    store = f'few_shot_cfg.feature_dir={tmp_path / "feature_cache"}'
    for cmd in (cmd_free, cmd_f, cmd_re):
        assert store in cmd
        assert 'fewshot_dataloader.dataset.num_shots=8' in cmd
        assert 'fewshot_dataloader.dataset.seed=3' in cmd
        assert not any(o.startswith('custom_hooks') for o in cmd)
    for option in ('train_dataloader.dataset.num_shots=8',
                   'train_dataloader.dataset.seed=3'):
        assert option in cmd_re
    assert not any(o.startswith('train_dataloader') for o in cmd_free)
    assert not any(o.startswith('train_dataloader') for o in cmd_f)
    assert cells[2].work_dir == str(
        tmp_path / 'tip_f_imagenet_16shot_reencode' / 'shots8_seed3')
    args.gpus = 2
    dist = sweep.cell_command(cells[2], args)
    assert dist[:2] == ['bash', str(REPO / 'tools/dist_train.sh')]
    assert dist[3] == '2'
    assert store in dist
    dist_free = sweep.cell_command(cells[0], args)
    assert dist_free[:2] == ['bash', str(REPO / 'tools/dist_test.sh')]
    assert dist_free[3] == '2'


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
    with pytest.raises(ValueError, match='few_shot_cfg.feature_dir'):
        sweep.check_user_options(
            sweep.parse_cfg_options(['few_shot_cfg.feature_dir=/tmp/x']),
            exp)
    sweep.check_user_options({'model.head.alpha': 2.0}, exp)


def test_mean_and_sample_std_over_the_seeds_done(tmp_path):
    exp = sweep.load_experiment(str(CONFIGS / 'tip_imagenet_16shot.py'), {})
    cells = sweep.make_cells([exp], [1, 4], [1, 2, 3], str(tmp_path))
    top1 = {(1, 1): 60.0, (1, 2): 61.5, (1, 3): 63.0, (4, 1): 70.25}
    for cell in cells:
        if (cell.shots, cell.seed) in top1:
            (tmp_path / cell.work_dir).mkdir(parents=True)
            sweep.write_json_atomic(cell.result_path, dict(
                shots=cell.shots, seed=cell.seed,
                top1=top1[(cell.shots, cell.seed)]))
    stats = sweep.collect(cells)[('imagenet', 'Tip-Adapter')]
    assert stats[1].mean == pytest.approx(61.5)
    assert stats[1].std == pytest.approx(1.5)  # ddof=1
    assert stats[1].n == 3
    assert (stats[4].mean, stats[4].std, stats[4].n) == (70.25, None, 1)
    assert sweep.format_cell(stats[1], None) == '61.50 ± 1.50 (3)'
    assert sweep.format_cell(stats[4], 61.45) == \
        '70.25 ± n/a (1) [paper 61.45]'


def test_paper_figures_beside_rn50_imagenet(tmp_path):
    stat = sweep.Stat(61.0, 0.5, 3)
    table = {('imagenet', 'Tip-Adapter'): {1: stat, 16: stat},
             ('imagenet', 'Tip-Adapter-F (reencode)'): {16: stat}}
    backbones = {row: 'RN50' for row in table}
    md, csv_path = sweep.write_tables(table, [1, 16], backbones,
                                      str(tmp_path))
    text = open(md).read()
    assert '| imagenet | Tip-Adapter | 61.00 ± 0.50 (3) [paper 60.70] | ' \
        '61.00 ± 0.50 (3) [paper 62.03] |' in text
    assert '| - [paper 61.32] | 61.00 ± 0.50 (3) [paper 65.51] |' in text
    assert 'zero-shot CLIP on imagenet: 60.33' in text
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert rows[1]['1shot_mean'] == '' and rows[1]['1shot_n'] == '0'
    assert float(rows[1]['16shot_paper']) == 65.51
    # Another backbone: no paper figure.
    sweep.write_tables(table, [1, 16], {row: 'ViT-B-16' for row in table},
                       str(tmp_path))
    assert 'paper' not in open(md).read().split('\n\n')[0]
    png = sweep.plot(table, [1, 16], backbones, str(tmp_path / 'r.png'))
    assert open(png, 'rb').read(4) == b'\x89PNG'


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
    assert code == 1
    assert 'FAILED tip_imagenet_16shot shots=1 seed=1 (exit status 3)' in out
    assert 'boom' in out and 'Command: ' in out
    assert '1 of 2 cells failed: tip_imagenet_16shot shots=1 seed=1' in out
    assert not (tmp_path / 'tip_imagenet_16shot/shots1_seed1/'
                'sweep_result.json').exists()
    done = json.loads(open(cells[1].result_path).read())
    assert done['top1'] == 42.5 and done['shots'] == 2
    # The table holds what is done; paper figures only for RN50 (it is).
    assert ('| imagenet | Tip-Adapter | - [paper 60.70] | '
            '42.50 ± n/a (1) [paper 60.96] |') in (
                tmp_path / 'results.md').read_text()
