"""tools/sweep.py: a 2 configs x 2 shots x 2 seeds sweep on a tiny CLIP,
its table, plot, shared feature cache and resumption; the pieces alone."""
import csv
import importlib.util
import json
import statistics
import sys
import time

import pytest
from conftest import CONFIGS, REPO, python_tool, run_tool, tiny_config

SHOTS = (1, 2)
SEEDS = (1, 2)
F_EXTRA = """
global_batch_size = 4
train_cfg = dict(max_epochs=2)
param_scheduler = dict(T_max=2, end=2)
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
def swept(tiny_clip, image_folders, tmp_path_factory):
    root = tmp_path_factory.mktemp('sweep')
    configs = [
        tiny_config(root / 'tip_tiny_4shot.py', tiny_clip, image_folders),
        tiny_config(root / 'tip_f_tiny_4shot.py', tiny_clip, image_folders,
                    schedule='tip_adapter_f', extra=F_EXTRA),
    ]
    work_dir = root / 'work'
    output = run_tool(sweep_args(configs, work_dir), timeout=600)
    return configs, work_dir, output


def cell_results(work_dir):
    """{(stem, shots, seed): result} from the per-cell JSON files."""
    results = {}
    for path in work_dir.glob('*/shots*_seed*/sweep_result.json'):
        r = json.loads(path.read_text())
        assert path.parent.name == f"shots{r['shots']}_seed{r['seed']}"
        results[(r['stem'], r['shots'], r['seed'])] = r
    return results


def test_every_cell_runs_once_and_saves_its_result(swept):
    configs, work_dir, output = swept
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
    # Each cell's cache has shots x 3 classes keys.
    log = (work_dir / 'tip_tiny_4shot/shots2_seed1/sweep_cell.log')
    assert 'Cache model: 6 keys of dim 32' in log.read_text()


def test_validation_features_are_encoded_once_per_config(swept):
    configs, work_dir, _ = swept
    for config in configs:
        cache = work_dir / config.stem / 'feature_cache'
        assert len(list(cache.glob('val_*.pth'))) == 1
        # One set of augmented views per (shots, seed).
        assert len(list(cache.glob('views_*.pth'))) == len(SHOTS) * len(
            SEEDS)
        logs = [(work_dir / config.stem / f'shots{k}_seed{s}' /
                 'sweep_cell.log').read_text() for k in SHOTS for s in SEEDS]
        encoded = [log for log in logs if 'Encoding 12 val images' in log]
        assert len(encoded) == 1
        assert all('Loaded val features' in log for log in logs
                   if log not in encoded)


def expected_stats(work_dir):
    """{(method, shots): (mean, sample std, n)} recomputed from the JSONs."""
    by_cell = {}
    for (stem, k, _), r in cell_results(work_dir).items():
        by_cell.setdefault((r['method'], k), []).append(r['top1'])
    return {key: (statistics.fmean(v), statistics.stdev(v), len(v))
            for key, v in by_cell.items()}


def test_tables_hold_mean_and_std_over_seeds(swept):
    _, work_dir, _ = swept
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


def test_second_run_skips_every_cell(swept):
    configs, work_dir, _ = swept
    results = sorted(work_dir.glob('*/shots*_seed*/sweep_result.json'))
    stamps = [p.stat().st_mtime_ns for p in results]
    tables = [(work_dir / n).read_text() for n in ('results.md',
                                                   'results.csv')]
    start = time.time()
    output = run_tool(sweep_args(configs, work_dir), timeout=120)
    elapsed = time.time() - start
    assert output.count('skip (done') == 8
    assert ': run' not in output
    assert [p.stat().st_mtime_ns for p in results] == stamps
    assert not list(work_dir.glob('*/shots*_seed*/*.tmp*'))
    assert tables == [(work_dir / n).read_text() for n in ('results.md',
                                                           'results.csv')]
    assert elapsed < 30, elapsed  # no cell ran (each takes several seconds)


# The pieces, without running a cell.


def test_names_come_from_the_config_file_name():
    assert sweep.names_from_stem('tip_imagenet_16shot', False) == (
        'imagenet', 'Tip-Adapter')
    assert sweep.names_from_stem('tip_f_imagenet_16shot', True) == (
        'imagenet', 'Tip-Adapter-F')
    assert sweep.names_from_stem('tip_f_imagenet_16shot_reencode', True) == (
        'imagenet', 'Tip-Adapter-F (reencode)')
    assert sweep.names_from_stem('my_dataset', False) == ('my_dataset',
                                                          'Tip-Adapter')
    assert sweep.names_from_stem('gda_imagenet_16shot', False,
                                 'GDAHead') == ('imagenet', 'GDA')
    assert sweep.names_from_stem('ape_dtd_16shot', False,
                                 'APEHead') == ('dtd', 'APE')
    assert sweep.paper_figure('imagenet', 'GDA', 16, 'RN50') == 63.82
    assert sweep.paper_figure('imagenet', 'APE', 16, 'RN50') == 63.42
    gda = sweep.load_experiment(str(CONFIGS / 'gda_imagenet_16shot.py'), {})
    assert (gda.dataset, gda.method) == ('imagenet', 'GDA')
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
    cells = sweep.make_cells([free, reencode], [8], [3], str(tmp_path))
    cmd_free, cmd_re = (sweep.cell_command(c, args) for c in cells)
    assert cmd_free[1].endswith('tools/test.py')
    assert cmd_re[1].endswith('tools/train.py')
    cache = tmp_path / 'tip_f_imagenet_16shot_reencode' / 'feature_cache'
    for option in ('fewshot_dataloader.dataset.num_shots=8',
                   'fewshot_dataloader.dataset.seed=3',
                   'train_dataloader.dataset.num_shots=8',
                   'train_dataloader.dataset.seed=3',
                   f'custom_hooks.0.cache_dir={cache}',
                   f'custom_hooks.1.cache_dir={cache}'):
        assert option in cmd_re
    assert not any(o.startswith('train_dataloader') for o in cmd_free)
    assert cells[1].work_dir == str(
        tmp_path / 'tip_f_imagenet_16shot_reencode' / 'shots8_seed3')
    args.gpus = 2
    dist = sweep.cell_command(cells[1], args)
    assert dist[:2] == ['bash', str(REPO / 'tools/dist_train.sh')]
    assert dist[3] == '2'


def test_options_the_sweep_sets_are_refused():
    exp = sweep.load_experiment(str(CONFIGS / 'tip_imagenet_16shot.py'), {})
    options = sweep.parse_cfg_options(
        ['fewshot_dataloader.dataset.seed=4', 'model.head.alpha=2'])
    with pytest.raises(ValueError, match='dataset.seed'):
        sweep.check_user_options(options, exp)
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
