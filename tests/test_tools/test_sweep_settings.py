"""tools/sweep.py --setting: base-to-new end to end on a tiny CLIP
(zero-shot CLIP and CoOp adapted on 2 base classes of 4, then tested on
the 2 new ones with the cell's model), the target configs each setting
finds, the test commands, and the tables (base / new / H with the
published H and its source; a column per target)."""
import csv
import json
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
from conftest import (CONFIGS, REPO, load_tool, python_tool, run_tool,
                      tiny_config)

TOP1 = re.compile(r'accuracy/top1: (\d+\.\d+)')


sweep = load_tool('sweep')


def wrap(subset: str) -> str:
    """Config lines wrapping the three loaders of the ``_base_`` config in
    a BaseToNewDataset (as configs/_base_/datasets/*_base_to_new.py)."""
    return f"""
fewshot_dataloader = dict(dataset=dict(dataset=dict(
    _delete_=True, type='BaseToNewDataset', subset={subset!r},
    dataset={{{{_base_.fewshot_dataloader.dataset.dataset}}}})))
val_dataloader = dict(dataset=dict(
    _delete_=True, type='BaseToNewDataset', subset={subset!r},
    dataset={{{{_base_.val_dataloader.dataset}}}}))
test_dataloader = dict(dataset=dict(
    _delete_=True, type='BaseToNewDataset', subset={subset!r},
    dataset={{{{_base_.test_dataloader.dataset}}}}))
"""


def b2n_configs(folder: Path, method: str, tiny_clip, data_root,
                **plain) -> Path:
    """``<method>_tiny_base.py`` (2 base classes) and ``_new.py`` beside
    it (the complement, as configs/generalization/base_to_new/)."""
    tiny_config(folder / f'{method}_plain.py', tiny_clip, data_root,
                num_shots=2, augment_epoch=1, **plain)
    base = folder / f'{method}_tiny_base.py'
    base.write_text(f"_base_ = ['./{method}_plain.py']\n"
                    "dataset_name = 'tiny'\n" + wrap('base'))
    (folder / f'{method}_tiny_new.py').write_text(
        f"_base_ = ['./{method}_tiny_base.py']\n"
        "fewshot_dataloader = dict(dataset=dict(dataset=dict("
        "subset='new')))\n"
        "val_dataloader = dict(dataset=dict(subset='new'))\n"
        "test_dataloader = dict(dataset=dict(subset='new'))\n")
    return base


@pytest.fixture(scope='module')
def swept(tiny_clip, four_classes, tmp_path_factory):
    """Zero-shot CLIP and CoOp (2 epochs) x 2 shots x seed 1 in the
    base-to-new setting."""
    root = tmp_path_factory.mktemp('b2n')
    zero_shot = b2n_configs(
        root, 'zero_shot', tiny_clip, four_classes,
        head="dict(_delete_=True, type='ZeroShotHead', num_classes=2, "
        'topk=(1, ))')
    coop = b2n_configs(
        root, 'coop', tiny_clip, four_classes, schedule='coop',
        model_base='coop_rn50',
        head="dict(_delete_=True, type='CoOpHead', num_classes=2, "
        'num_context=4, topk=(1, ))',
        extra='train_cfg = dict(max_epochs=2, global_batch_size=4)\n'
        'optim_wrapper = dict(optimizer=dict(lr=0.05))\n')
    work = root / 'work'
    args = python_tool('sweep.py', str(zero_shot), str(coop), '--setting',
                       'base_to_new', '--shots', '2', '--seeds', '1',
                       '--work-dir', str(work))
    output = run_tool(args, timeout=900)
    return dict(zero_shot=zero_shot, coop=coop), work, output, args


def own_top1(log: Path) -> float:
    """The top-1 of the last test line of a log, parsed here."""
    lines = [ln for ln in log.read_text().splitlines()
             if 'Epoch(test)' in ln]
    return float(TOP1.findall(lines[-1])[-1])


def test_base_to_new_records_base_new_and_their_harmonic_mean(swept):
    configs, work, output, _ = swept
    assert output.count(': run\n') == 2 and 'FAILED' not in output
    assert not (work / 'results.md').exists()  # the few-shot table
    assert (work / 'feature_cache').is_dir()  # shared with every setting
    for method, config in configs.items():
        protocol = 'none' if method == 'coop' else 'val'
        cell = (work / 'base_to_new' / config.stem /
                f'shots2_seed1_{protocol}')
        record = json.loads((cell / 'sweep_result.json').read_text())
        base = own_top1(cell / 'sweep_cell.log')
        new_log = cell / 'new' / 'sweep_test.log'
        new = own_top1(new_log)
        assert record['setting'] == 'base_to_new'
        assert (record['top1'], record['base'], record['new']) == (
            base, base, new)
        expected = 0.0 if base + new == 0 else 2 * base * new / (base + new)
        assert record['H'] == pytest.approx(expected, abs=1e-12)
        test = record['tests']['new']
        assert test['config'] == str(config).replace('_base.py', '_new.py')
        assert test['top1'] == new
        # The new classes' test ran on the cell's model, re-prompted with
        # the two new names.
        model = cell / ('final_searched.pth' if method == 'coop' else
                        'adapted_model.pth')
        assert test['command'][3] == str(model)
        text = new_log.read_text()
        head = 'CoOpHead' if method == 'coop' else 'ZeroShotHead'
        assert f'Re-prompting {head}' in text
        assert "'c_blue', 'd_yellow'" in text
        assert (model.exists()) is (method == 'coop')  # no --keep-models
    table = (work / 'base_to_new' / 'results.md').read_text()
    for method, config in configs.items():
        protocol = 'none' if method == 'coop' else 'val'
        record = json.loads(next(
            (work / 'base_to_new' / config.stem).glob(
                '*/sweep_result.json')).read_text())
        name = 'CoOp' if method == 'coop' else 'Zero-shot CLIP'
        assert (f'| tiny | TinyCLIP-ViT-test | {name} | {protocol} | 2 | '
                f'{record["base"]:.2f} ± n/a (1) | '
                f'{record["new"]:.2f} ± n/a (1) | '
                f'{record["H"]:.2f} ± n/a (1) |') in table


def test_a_second_run_skips_the_finished_cells(swept, capsys):
    _, work, _, args = swept
    records = sorted((work / 'base_to_new').glob('*/*/sweep_result.json'))
    before = [p.read_text() for p in records]
    assert sweep.main(args[2:]) == 0  # in this process: nothing runs
    output = capsys.readouterr().out
    assert output.count('skip (done') == 2 and ': run\n' not in output
    assert [p.read_text() for p in records] == before


def test_each_setting_finds_its_configs():
    b2n = CONFIGS / 'generalization' / 'base_to_new'
    exp = sweep.load_experiment(str(b2n / 'coop_dtd_base.py'), {},
                                'base_to_new')
    assert exp.tests == [('new', str(b2n / 'coop_dtd_new.py'))]
    assert (exp.dataset, exp.method) == ('dtd', 'CoOp')
    cross = sweep.load_experiment(str(CONFIGS / 'coop_imagenet_16shot.py'),
                                  {}, 'cross_dataset')
    assert [name for name, _ in cross.tests] == sorted(
        set(sweep.BENCHMARK_DATASETS) - {'imagenet'})
    assert all(path == str(CONFIGS / 'generalization' / 'cross_dataset' /
                           f'coop_imagenet_16shot_to_{name}.py')
               for name, path in cross.tests)
    shift = sweep.load_experiment(str(CONFIGS / 'tip_imagenet_16shot.py'),
                                  {}, 'domain_shift')
    assert [name for name, _ in shift.tests] == [
        'imagenet_a', 'imagenet_r', 'imagenet_sketch', 'imagenet_v2']
    assert sweep.load_experiment(str(CONFIGS / 'coop_dtd_16shot.py'),
                                 {}).tests == []
    # Tip-Adapter has no _new config; a plain config is not a _base one.
    with pytest.raises(FileNotFoundError, match='tip_dtd_16shot_new.py'):
        sweep.setting_tests(str(b2n / 'tip_dtd_16shot_base.py'),
                            'tip_dtd_16shot_base', 'base_to_new')
    with pytest.raises(ValueError, match='_base.py'):
        sweep.setting_tests(str(CONFIGS / 'coop_dtd_16shot.py'),
                            'coop_dtd_16shot', 'base_to_new')
    with pytest.raises(FileNotFoundError, match='coop_dtd_16shot_to_'):
        sweep.setting_tests(str(CONFIGS / 'coop_dtd_16shot.py'),
                            'coop_dtd_16shot', 'cross_dataset')
    with pytest.raises(SystemExit):
        sweep.parse_args(['x.py', '--setting', 'zero_shot'])


def test_target_tests_run_with_the_cells_model(tmp_path):
    # A config that re-encodes its training set: the sweep sets the
    # shots of its train loader too.
    exp = sweep.load_experiment(
        str(CONFIGS / 'tip_f_imagenet_16shot_reencode.py'), {})
    exp.setting = 'domain_shift'
    exp.tests = sweep.setting_tests(
        str(CONFIGS / 'tip_f_imagenet_16shot.py'), 'tip_f_imagenet_16shot',
        'domain_shift')
    args = sweep.parse_args([exp.config, '--work-dir', str(tmp_path),
                             '--cfg-options', 'log_level=WARNING'])
    cell, = sweep.make_cells([exp], [4], [2], str(tmp_path / 'ds'), None,
                             str(tmp_path / 'feature_cache'))
    assert cell.work_dir == str(tmp_path / 'ds' / exp.stem /
                                'shots4_seed2_val')
    name, config = exp.tests[0]
    command = sweep.test_command(cell, config, 'model.pth',
                                 f'{cell.work_dir}/{name}', args)
    assert command[1:4] == [str(REPO / 'tools/test.py'), config,
                            'model.pth']
    options = command[command.index('--cfg-options') + 1:]
    # The cell's shots, seed, feature store and protocol; not the options
    # of its re-encoded training set (nothing trains).
    assert options == [
        'fewshot_dataloader.dataset.num_shots=4',
        'fewshot_dataloader.dataset.seed=2',
        f'few_shot_cfg.feature_dir={tmp_path / "feature_cache"}',
        'few_shot_cfg.protocol=val', 'log_level=WARNING']
    assert command[command.index('--work-dir') + 1] == \
        f'{cell.work_dir}/imagenet_a'
    args.gpus = 2
    dist = sweep.test_command(cell, config, 'model.pth', 'w', args)
    assert dist[:5] == ['bash', str(REPO / 'tools/dist_test.sh'), config,
                        '2', 'model.pth']


def b2n_record(dataset, method, seed, base, new, backbone='ViT-B-16',
               shots=16):
    return dict(dataset=dataset, backbone=backbone, method=method,
                protocol='none', shots=shots, seed=seed, stem=method,
                setting='base_to_new', top1=base, base=base, new=new,
                H=2 * base * new / (base + new))


def table_rows(path):
    with open(path, newline='') as f:
        return {(r['dataset'], r['method']): r for r in csv.DictReader(f)}


def test_b2n_table_averages_and_published_h(tmp_path):
    datasets = sorted(sweep.BENCHMARK_DATASETS)
    rng = np.random.default_rng(0)
    records = []
    for method in ('CoOp', 'CLIP-LoRA', 'Zero-shot CLIP', 'VPT',
                   'Meta-Adapter'):
        for d in datasets:
            for seed in (1, 2):
                base, new = rng.uniform(40, 90, 2).round(2)
                records.append(b2n_record(d, method, seed, float(base),
                                          float(new)))
    md, path = sweep.write_setting_tables('base_to_new', str(tmp_path),
                                          records)
    rows = table_rows(path)
    text = Path(md).read_text()
    for method, paper, source, repo in (
            ('CoOp', 71.66, 'MaPLe README',
             'muzairkhattak/multimodal-prompt-learning'),
            ('CLIP-LoRA', 79.18, 'CLIP-SVD README', 'HealthX-Lab/CLIP-SVD'),
            ('Zero-shot CLIP', 71.70, 'MaPLe README',
             'muzairkhattak/multimodal-prompt-learning'),
            ('VPT', 76.68, 'MaPLe README', 'Deep Vision Prompting')):
        # The average row: per seed, H of the mean base and mean new.
        per_seed = []
        for seed in (1, 2):
            mine = [r for r in records if r['method'] == method
                    and r['seed'] == seed]
            b = statistics.fmean(r['base'] for r in mine)
            n = statistics.fmean(r['new'] for r in mine)
            per_seed.append((b, n, 2 * b * n / (b + n)))
        row = rows[('average', method)]
        for i, column in enumerate(('base', 'new', 'H')):
            values = [s[i] for s in per_seed]
            assert float(row[f'16shot_{column}_mean']) == pytest.approx(
                statistics.fmean(values), abs=1e-4)
            assert float(row[f'16shot_{column}_std']) == pytest.approx(
                statistics.stdev(values), abs=1e-4)
        assert float(row['16shot_paper_H']) == paper
        assert row['16shot_paper_source'] == source
        h = statistics.fmean(s[2] for s in per_seed)
        assert (f'{h:.2f} ± {statistics.stdev(s[2] for s in per_seed):.2f}'
                f' (2) [paper {paper:.2f}, {source}] |') in text
        assert re.search(rf'- ViT-B-16, {method}, (16|0) shots: base '
                         rf'[\d.]+, new [\d.]+, H {paper:.2f}\. {source}: '
                         rf'.*{repo}', text)
        # A dataset's row: its own seeds, no published figure.
        dtd = [r['H'] for r in records
               if r['method'] == method and r['dataset'] == 'dtd']
        assert float(rows[('dtd', method)]['16shot_H_mean']) == \
            pytest.approx(statistics.fmean(dtd), abs=1e-4)
        assert rows[('dtd', method)]['16shot_paper_H'] == ''
    assert rows[('average', 'Meta-Adapter')]['16shot_paper_H'] == ''
    # Ten datasets: the average is not the published one's.
    fewer = [r for r in records if r['dataset'] != 'ucf101']
    (tmp_path / 'ten').mkdir()
    md, path = sweep.write_setting_tables('base_to_new',
                                          str(tmp_path / 'ten'), fewer)
    assert table_rows(path)[('average', 'CoOp')]['16shot_paper_H'] == ''
    assert '[paper' not in Path(md).read_text()
    assert 'missing: ucf101' in Path(md).read_text()


def test_cross_dataset_table_has_a_column_per_target(tmp_path):
    records = [
        dict(dataset='imagenet', backbone='RN50', method='CoOp',
             protocol='none', shots=16, seed=seed, stem='coop_imagenet',
             setting='cross_dataset', top1=60.0 + seed,
             tests=dict(dtd=dict(top1=40.0 + seed),
                        eurosat=dict(top1=30.0 - seed)))
        for seed in (1, 2)]
    md, path = sweep.write_setting_tables('cross_dataset', str(tmp_path),
                                          records)
    row = table_rows(path)[('imagenet', 'CoOp')]
    assert float(row['16shot_source_mean']) == 61.5
    assert float(row['16shot_dtd_mean']) == 41.5
    assert float(row['16shot_eurosat_mean']) == 28.5
    assert float(row['16shot_average_mean']) == 35.0  # (41 + 29 ...) / 2
    assert row['16shot_n'] == '2'
    assert '| source | backbone | method | protocol | shots | source | dtd |'\
        ' eurosat | average |' in Path(md).read_text()
