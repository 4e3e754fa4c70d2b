"""Base-to-new generalisation: the split of the classes (CoCoOp: base is
the first ceil(N / 2) labels), the relabelling, the few-shot and held-out
wrappers over it, the harmonic mean, the configs and a tiny run."""
import math
import re

import numpy as np
import pytest
from conftest import CONFIGS, tiny_config, write_images
from mmengine.config import Config
from PIL import Image

import tip_adapter_mm  # noqa: F401  (registers the plugin's modules)
from mmpretrain.registry import DATASETS, RUNNERS
from tip_adapter_mm.datasets import (BaseToNewDataset, FewShotDataset,
                                     HoldoutDataset, base_new_labels)
from tip_adapter_mm.evaluation import harmonic_mean

NAMES = [f'class_{c:02d}' for c in range(7)]


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    """``<root>/n<N>/``: the first N of 7 class folders (N = 6 or 7);
    class c has 4 + c images (unequal on purpose)."""
    root = tmp_path_factory.mktemp('b2n')
    rng = np.random.default_rng(0)
    for n in (6, 7):
        for c, name in enumerate(NAMES[:n]):
            (root / f'n{n}' / name).mkdir(parents=True)
            for i in range(4 + c):
                pixels = rng.integers(0, 255, (4, 4, 3), np.uint8)
                Image.fromarray(pixels).save(root / f'n{n}' / name /
                                             f'{i}.jpg')
    return root


def folder_dataset(root, classes):
    """``classes`` class folders as a CustomDataset."""
    return DATASETS.build(
        dict(type='CustomDataset', data_root=str(root / f'n{classes}'),
             classes=NAMES[:classes], with_label=True,
             pipeline=[dict(type='LoadImageFromFile'),
                       dict(type='PackInputs')]))


@pytest.mark.parametrize('n,base', [(2, 1), (6, 3), (7, 4), (47, 24),
                                    (101, 51), (1000, 500)])
def test_split_sizes(n, base):
    # Written out: base = ceil(N / 2) first labels, new = the rest.
    assert base_new_labels(n, 'base') == tuple(range(base))
    assert base_new_labels(n, 'new') == tuple(range(base, n))
    assert base_new_labels(n, 'all') == tuple(range(n))
    assert base == math.ceil(n / 2)


def test_split_errors():
    with pytest.raises(ValueError, match="'novel'"):
        base_new_labels(4, 'novel')
    with pytest.raises(ValueError, match='at least 2'):
        base_new_labels(1, 'base')


@pytest.mark.parametrize('classes', [6, 7])
@pytest.mark.parametrize('subset', ['base', 'new', 'all'])
def test_relabelling(folders, classes, subset):
    full = folder_dataset(folders, classes)
    wrapped = BaseToNewDataset(full, subset=subset)
    half = (classes + 1) // 2  # ceil for even and odd
    first, last = dict(base=(0, half), new=(half, classes),
                       all=(0, classes))[subset]
    # Independent: every (path, label) of the full set inside the range,
    # relabelled by subtracting the first original label, in order.
    want = [(full.get_data_info(i)['img_path'],
             int(full.get_data_info(i)['gt_label']) - first)
            for i in range(len(full))
            if first <= full.get_data_info(i)['gt_label'] < last]
    got = [(wrapped.get_data_info(i)['img_path'],
            int(wrapped.get_data_info(i)['gt_label']))
           for i in range(len(wrapped))]
    assert got == want
    assert len(got) == sum(4 + c for c in range(first, last))
    assert wrapped.metainfo['classes'] == tuple(NAMES[first:last])
    assert wrapped.metainfo['source_labels'] == tuple(range(first, last))
    item = wrapped[len(wrapped) - 1]  # through the wrapped pipeline
    assert item['data_samples'].img_path == want[-1][0]
    assert int(item['data_samples'].gt_label) == want[-1][1]


def test_few_shot_and_holdout_over_the_base_classes(folders):
    base = dict(type='BaseToNewDataset', subset='base',
                dataset=dict(type='CustomDataset',
                             data_root=str(folders / 'n7'),
                             classes=NAMES, with_label=True))
    shots = FewShotDataset(base, num_shots=2, seed=3,
                           holdout=dict(num_per_class=1, seed=0))
    labels = shots.get_gt_labels()
    assert np.bincount(labels).tolist() == [2, 2, 2, 2]  # 4 base classes
    dirs = {shots.get_data_info(i)['img_path'].split('/')[-2]
            for i in range(len(shots))}
    assert dirs == set(NAMES[:4])
    assert shots.metainfo['classes'] == tuple(NAMES[:4])
    held = HoldoutDataset(base, num_per_class=1, seed=0)
    assert sorted(held.get_gt_labels().tolist()) == [0, 1, 2, 3]
    held_paths = {held.get_data_info(i)['img_path']
                  for i in range(len(held))}
    shot_paths = {shots.get_data_info(i)['img_path']
                  for i in range(len(shots))}
    assert not held_paths & shot_paths


def test_harmonic_mean():
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    assert harmonic_mean(70.0, 70.0) == pytest.approx(70.0)
    assert harmonic_mean(0, 0) == 0.0
    assert harmonic_mean(100, 0) == 0.0
    with pytest.raises(ValueError, match='>= 0'):
        harmonic_mean(-1, 50)


B2N_CONFIGS = ['tip_dtd_16shot_base.py', 'zero_shot_dtd_base.py',
               'zero_shot_dtd_new.py']


@pytest.mark.parametrize('name', B2N_CONFIGS)
def test_configs_build_and_name_missing_data(name, tmp_path):
    cfg = Config.fromfile(
        str(CONFIGS / 'generalization' / 'base_to_new' / name))
    subset = 'new' if name.endswith('_new.py') else 'base'
    loaders = (cfg.fewshot_dataloader.dataset.dataset,
               cfg.val_dataloader.dataset, cfg.test_dataloader.dataset)
    assert [d.type for d in loaders] == ['BaseToNewDataset'] * 3
    assert [d.subset for d in loaders] == [subset] * 3
    assert [d.dataset.split for d in loaders] == ['train', 'val', 'test']
    assert cfg.model.head.num_classes == dict(base=24, new=23)[subset]
    test_cfg = cfg.test_dataloader.dataset
    test_cfg.dataset.data_root = str(tmp_path / 'missing')
    with pytest.raises(FileNotFoundError,
                       match=re.escape(str(tmp_path / 'missing'))):
        DATASETS.build(test_cfg)


@pytest.mark.parametrize('subset', ['base', 'new'])
def test_runs_on_base_and_new_classes(tmp_path, tiny_clip, subset):
    """Three colour classes: base = 2 (Tip-Adapter fits, searches and
    tests on them, relabelled), new = 1 (zero-shot CLIP on its name)."""
    root = tmp_path / 'data'
    for seed, (split, per_class) in enumerate(
            [('train', 6), ('val', 2), ('test', 3)]):
        write_images(root / split, per_class, seed, size=(24, 24))
    head = ('dict(num_classes=2, search_step=(4, 4), topk=(1, ))'
            if subset == 'base' else
            'dict(_delete_=True, type="ZeroShotHead", num_classes=1, '
            'topk=(1, ))')
    path = tiny_config(tmp_path / 'cfg.py', tiny_clip, root, num_shots=2,
                       augment_epoch=1, head=head)
    cfg = Config.fromfile(str(path))
    cfg.fewshot_dataloader.dataset.dataset = dict(
        type='BaseToNewDataset', subset=subset,
        dataset=cfg.fewshot_dataloader.dataset.dataset)
    for loader in (cfg.val_dataloader, cfg.test_dataloader):
        loader.dataset = dict(type='BaseToNewDataset', subset=subset,
                              dataset=loader.dataset)
    cfg.work_dir = str(tmp_path / 'work')
    cfg.log_level = 'WARNING'
    runner = RUNNERS.build(cfg)
    metrics = runner.test()
    names = ('blue_sky', 'green_leaf', 'red_apple')  # sorted folders
    test_set = runner.test_loop.image_dataloader.dataset
    if subset == 'base':
        assert runner.few_shot.classes == names[:2]
        assert len(test_set) == 2 * 3
        assert sorted(test_set.get_gt_labels().tolist()) == [0] * 3 + [1] * 3
        assert runner.model.head.cache.values.shape == (2 * 2, 2)
        assert 0.0 <= metrics['accuracy/top1'] <= 100.0
    else:
        assert runner.few_shot.classes == names[2:]
        assert test_set.get_gt_labels().tolist() == [0] * 3
        assert {test_set.get_data_info(i)['img_path'].split('/')[-2]
                for i in range(3)} == {'red_apple'}
        assert runner.model.head.zero_shot_weights.shape[1] == 1
        assert metrics['accuracy/top1'] == 100.0  # one class
