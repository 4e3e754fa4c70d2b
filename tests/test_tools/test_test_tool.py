"""tools/test.py and tools/dist_test.sh end to end on a tiny random CLIP."""
import json
import re

import pytest
import torch
from conftest import free_port, python_tool, run_tool, tiny_config


def top1(output: str) -> float:
    found = re.findall(r'accuracy/top1: ([0-9.]+)', output)
    assert found, output[-3000:]
    return float(found[-1])


def saved(work_dir, prefix):
    files = sorted((work_dir / 'feature_cache').glob(f'{prefix}_*.pth'))
    assert len(files) == 1, files
    return torch.load(files[0], weights_only=True)


def search_report(work_dir):
    reports = sorted(work_dir.glob('*/hyperparameter_search.json'))
    assert reports, list(work_dir.iterdir())
    return json.loads(reports[-1].read_text())


@pytest.fixture(scope='module')
def single_run(tiny_clip, image_folders, tmp_path_factory):
    root = tmp_path_factory.mktemp('single')
    config = tiny_config(root / 'tiny_tip.py', tiny_clip, image_folders)
    work_dir = root / 'work'
    output = run_tool(
        python_tool('test.py', str(config), '--work-dir', str(work_dir)))
    return config, work_dir, output


def test_test_py_builds_cache_searches_and_reports_top1(single_run):
    config, work_dir, output = single_run
    assert 'Building zero-shot weights for 3 classes' in output
    assert 'Cache model: 12 keys of dim 32, 3 classes, 3 augmented views' \
        in output
    assert 'Hyperparameter search on val (12 images, 200 points)' in output
    accuracy = top1(output)
    assert 0.0 <= accuracy <= 100.0
    views = saved(work_dir, 'views')
    assert views['feats'].shape == (36, 32)
    assert saved(work_dir, 'val')['feats'].shape == (12, 32)
    report = search_report(work_dir)
    assert set(report['best']) == {'beta', 'alpha'}
    assert len(report['accuracy_grid']) == 20


def test_second_run_reuses_saved_features(single_run):
    config, work_dir, output = single_run
    again = run_tool(
        python_tool('test.py', str(config), '--work-dir', str(work_dir)))
    assert 'Loaded 3 augmented views of 12 few-shot images' in again
    assert 'Loaded val features' in again
    assert 'Encoding' not in again
    assert top1(again) == top1(output)


def test_dist_test_two_processes_matches_one(single_run, tmp_path,
                                             monkeypatch):
    config, single_dir, single_output = single_run
    monkeypatch.setenv('PORT', free_port())
    work_dir = tmp_path / 'dist'
    output = run_tool([
        'bash', 'tools/dist_test.sh',
        str(config), '2', '--work-dir',
        str(work_dir)
    ])
    assert 'Distributed training: True' in output
    assert 'gloo' in output or torch.cuda.is_available()
    torch.testing.assert_close(
        saved(work_dir, 'views')['feats'],
        saved(single_dir, 'views')['feats'],
        rtol=1e-5,
        atol=1e-5)
    assert torch.equal(
        saved(work_dir, 'views')['labels'],
        saved(single_dir, 'views')['labels'])
    torch.testing.assert_close(
        saved(work_dir, 'val')['feats'],
        saved(single_dir, 'val')['feats'],
        rtol=1e-5,
        atol=1e-5)
    assert search_report(work_dir)['best'] == search_report(single_dir)['best']
    assert top1(output) == top1(single_output)


@pytest.mark.parametrize('head', [
    "dict(type='TipAdapterHead', num_classes=3, search_step=(20, 10), "
    "topk=(1, ))",
    "dict(_delete_=True, type='GDAHead', num_classes=3, topk=(1, ))",
    "dict(_delete_=True, type='APEHead', num_classes=3, feat_num=16, "
    "search_step=(10, 5, 3), topk=(1, ))",
])
def test_heads_run_save_and_reload_through_test_py(head, tiny_clip,
                                                   image_folders, tmp_path):
    config = tiny_config(
        tmp_path / 'sibling.py',
        tiny_clip,
        image_folders,
        extra=f"model['head'] = {head}")
    output = run_tool(
        python_tool('test.py', str(config), '--work-dir',
                    str(tmp_path / 'work')))
    assert 'Hyperparameter search on val' in output
    assert 0.0 <= top1(output) <= 100.0
    saved = tmp_path / 'adapted.pth'
    again = run_tool(
        python_tool('test.py', str(config), '--work-dir',
                    str(tmp_path / 'work'), '--save-model', str(saved)))
    assert saved.is_file() and top1(again) == top1(output)
    reloaded = run_tool(
        python_tool('test.py', str(config), str(saved), '--work-dir',
                    str(tmp_path / 'reload')))
    assert 'Hyperparameter search' not in reloaded
    assert top1(reloaded) == top1(output)
    refused = run_tool(
        python_tool('test.py', str(config), '--save-model', str(saved)),
        expect_rc=1)
    assert 'exists; it is not overwritten' in refused
