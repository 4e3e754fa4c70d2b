"""tools/test.py and tools/dist_test.sh end to end on a tiny random CLIP:
the feature store (support views, val and test features), the search, and
2 processes equal to 1."""
import json
import re

import pytest
import torch
from conftest import python_tool, run_distributed, run_tool, tiny_config

from tip_adapter_mm.engine import read_features

#: Images in the generated folders (3 classes): 4 shots per class, val 4
#: and test 5 per class.
NUM_SHOTS_IMAGES, NUM_VAL, NUM_TEST = 12, 12, 15
VIEWS = 3


def top1(output: str) -> float:
    found = re.findall(r'accuracy/top1: ([0-9.]+)', output)
    assert found, output[-3000:]
    return float(found[-1])


def saved(work_dir, name):
    """The one feature-store entry ``<name>_<key>.pth`` of a run, read and
    verified by the package's reader (format, description, digest)."""
    files = sorted((work_dir / 'feature_cache').glob(f'{name}_*.pth'))
    assert len(files) == 1, files
    return read_features(str(files[0]))


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
    assert (f'TipAdapterHead fitted on {NUM_SHOTS_IMAGES} few-shot images x '
            f'{VIEWS} augmented views (features of dim 32), 3 classes'
            in output)
    assert 'Hyperparameter search on val (12 images, 200 points)' in output
    accuracy = top1(output)
    assert 0.0 <= accuracy <= 100.0
    views = saved(work_dir, 'support_views')
    assert views.num_sets == 1
    assert views.feats[0].shape == (VIEWS * NUM_SHOTS_IMAGES, 32)
    # Row v * S + s is view v of image s: every view has the same labels.
    labels = views.labels.view(VIEWS, NUM_SHOTS_IMAGES)
    assert torch.equal(labels, labels[:1].expand_as(labels))
    assert sorted(labels[0].tolist()) == sorted([0, 1, 2] * 4)
    assert saved(work_dir, 'val').feats[0].shape == (NUM_VAL, 32)
    # The test loop runs on stored test features too.
    assert saved(work_dir, 'test').feats[0].shape == (NUM_TEST, 32)
    report = search_report(work_dir)
    assert set(report['best']) == {'beta', 'alpha'}
    assert len(report['accuracy_grid']) == 20


def test_second_run_reuses_saved_features(single_run):
    config, work_dir, output = single_run
    again = run_tool(
        python_tool('test.py', str(config), '--work-dir', str(work_dir)))
    assert (f'Loaded the features of {VIEWS} augmented views of '
            f'{NUM_SHOTS_IMAGES} few-shot images from') in again
    assert f'Loaded the features of {NUM_VAL} val images from' in again
    assert f'Loaded the features of {NUM_TEST} test images from' in again
    assert 'Encoding' not in again
    assert top1(again) == top1(output)


def test_dist_test_two_processes_matches_one(single_run, tmp_path):
    config, single_dir, single_output = single_run
    work_dir = tmp_path / 'dist'
    output = run_distributed('dist_test.sh', str(config), 2, '--work-dir',
                             str(work_dir))
    # MMEngine's environment dump: in the log file (on the screen only
    # with --show-config).
    log = next(work_dir.glob('2*/2*.log')).read_text()
    assert 'Distributed training: True' in log
    assert 'gloo' in log or torch.cuda.is_available()
    for name in ('support_views', 'val', 'test'):
        two, one = saved(work_dir, name), saved(single_dir, name)
        torch.testing.assert_close(
            two.feats[0], one.feats[0], rtol=1e-5, atol=1e-5)
        assert torch.equal(two.labels, one.labels), name
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
    saved_model = tmp_path / 'adapted.pth'
    again = run_tool(
        python_tool('test.py', str(config), '--work-dir',
                    str(tmp_path / 'work'), '--save-model',
                    str(saved_model)))
    assert saved_model.is_file() and top1(again) == top1(output)
    reloaded = run_tool(
        python_tool('test.py', str(config), str(saved_model), '--work-dir',
                    str(tmp_path / 'reload')))
    assert 'Hyperparameter search' not in reloaded
    # A fitted checkpoint: nothing is fitted (or encoded) on the few-shot
    # set again.
    assert ' fitted on ' not in reloaded
    assert 'few-shot images' not in reloaded
    assert top1(reloaded) == top1(output)
    refused = run_tool(
        python_tool('test.py', str(config), '--save-model',
                    str(saved_model)),
        expect_rc=1)
    assert 'exists; it is not overwritten' in refused
