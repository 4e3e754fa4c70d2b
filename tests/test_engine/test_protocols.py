"""The protocol switch (few_shot_cfg.protocol): which images select the
hyperparameters and the epoch, drawn as specified, disjoint from the shots,
never the test split unless 'reference_test' is named."""
import os.path as osp
from collections import Counter

import pytest
import torch
from mmengine.config import Config

from mmpretrain.registry import RUNNERS
from tip_adapter_mm.engine import FewShotBuilder
from conftest import python_tool, run_tool, tiny_config


def build_runner(tmp_path, tiny_clip, image_folders, protocol, num_shots=4,
                 seed=1, extra='', name='cfg.py'):
    path = tiny_config(tmp_path / name, tiny_clip, image_folders,
                       num_shots=num_shots, augment_epoch=1, extra=extra)
    cfg = Config.fromfile(str(path))
    cfg.few_shot_cfg.protocol = protocol
    cfg.fewshot_dataloader.dataset.seed = seed
    cfg.few_shot_cfg.feature_dir = str(tmp_path / 'features')
    cfg.work_dir = str(tmp_path / f'work_{protocol}_{num_shots}_{seed}')
    cfg.log_level = 'WARNING'
    return RUNNERS.build(cfg)


def selection_set(runner):
    """(image paths, labels) of the images the protocol selects on."""
    builder = runner.few_shot
    runner.model.init_weights()
    builder.build_cache(runner)
    loader = builder.features_dataloader(runner, 'val', runner.val_dataloader)
    dataset = loader.dataset
    labels = [int(dataset[i]['data_samples'].gt_label)
              for i in range(len(dataset))]
    return dataset.img_paths, labels


def shot_paths(runner):
    dataset = runner.build_dataloader(
        runner.cfg.fewshot_dataloader).dataset
    return {dataset.get_data_info(i)['img_path'] for i in range(len(dataset))}


@pytest.mark.parametrize('protocol,num_shots,per_class', [
    ('val', 2, 4),  # the whole val split: 4 per class
    ('fewshot_val', 2, 2),  # min(K, 4)
    ('fewshot_val', 8, 4),
    ('kshot_val', 2, 2),  # K
    ('kshot_val', 3, 3),
])
def test_selection_subset_is_drawn_as_specified(tmp_path, tiny_clip,
                                                image_folders, protocol,
                                                num_shots, per_class):
    runner = build_runner(tmp_path, tiny_clip, image_folders, protocol,
                          num_shots)
    paths, labels = selection_set(runner)
    assert Counter(labels) == {c: per_class for c in range(3)}
    # Every selected image is a val image of its own class folder.
    val_root = osp.join(str(image_folders), 'val')
    classes = runner.few_shot.classes
    for path, label in zip(paths, labels):
        assert path.startswith(val_root)
        assert osp.basename(osp.dirname(path)) == classes[label]
    assert not set(paths) & shot_paths(runner)  # disjoint from the shots
    assert len(set(paths)) == len(paths)


def test_subset_depends_on_the_seed_only(tmp_path, tiny_clip, image_folders):
    picks = {}
    for seed in (1, 1, 2, 3):
        runner = build_runner(tmp_path, tiny_clip, image_folders,
                              'kshot_val', 2, seed=seed)
        paths, _ = selection_set(runner)
        picks.setdefault(seed, []).append(sorted(paths))
    assert picks[1][0] == picks[1][1]  # same seed, same images
    assert len({tuple(p[0]) for p in picks.values()}) > 1


def test_kshot_val_with_too_few_val_images_names_the_class(
        tmp_path, tiny_clip, image_folders):
    runner = build_runner(tmp_path, tiny_clip, image_folders, 'kshot_val',
                          num_shots=5)  # val has 4 per class
    with pytest.raises(ValueError,
                       match=r"protocol='kshot_val' needs 5 val images per "
                       r"class, but class 0 .* has 4 \(3 classes"):
        selection_set(runner)


def test_validation_that_is_the_test_split_needs_the_reference_option(
        tmp_path, tiny_clip, image_folders):
    same = ''.join(
        f"{split}_dataloader = dict(**loader, dataset=dict("
        "data_root=data_root, data_prefix='test'))\n"
        for split in ('val', 'test'))
    with pytest.raises(ValueError, match="reference_test"):
        build_runner(tmp_path, tiny_clip, image_folders, 'val', extra=same)
    runner = build_runner(tmp_path, tiny_clip, image_folders,
                          'reference_test', extra=same, name='ref.py')
    assert runner.few_shot.selection_split == 'test'


def test_unknown_protocol_and_missing_split_are_named(tmp_path, tiny_clip,
                                                      image_folders):
    with pytest.raises(ValueError, match=r"few_shot_cfg.protocol must be one "
                       r"of \['val', 'fewshot_val', 'kshot_val', 'none', "
                       r"'reference_test'\], got 'kshot'"):
        FewShotBuilder(protocol='kshot')
    path = tiny_config(tmp_path / 'noval.py', tiny_clip, image_folders,
                       augment_epoch=1)
    cfg = Config.fromfile(str(path))
    for key in ('val_dataloader', 'val_cfg', 'val_evaluator'):
        cfg.pop(key)
    cfg.work_dir = str(tmp_path / 'noval')
    cfg.few_shot_cfg.protocol = 'fewshot_val'
    runner = RUNNERS.build(cfg)
    with pytest.raises(KeyError, match=r"no `val_dataloader`.*protocol="
                       r"'fewshot_val' selects hyperparameters on it"):
        runner.test()


def test_hook_refuses_a_test_search_without_the_reference_option(
        tmp_path, tiny_clip, image_folders):
    extra = ("custom_hooks = [dict(type='BuildCacheHook'), "
             "dict(type='HyperparameterSearchHook', split='test')]\n")
    runner = build_runner(tmp_path, tiny_clip, image_folders, 'val',
                          extra=extra)
    with pytest.raises(ValueError, match="protocol='reference_test'"):
        runner.test()


def test_none_applies_the_validation_free_values_without_reading_val(
        tmp_path, tiny_clip, image_folders):
    runner = build_runner(tmp_path, tiny_clip, image_folders, 'none')
    head = runner.model.head
    head.set_hyperparameters(alpha=5.0, beta=7.0)  # not the fixed values
    runner.test()
    assert head.hyperparameters == head.validation_free_hyperparameters()
    assert not head.searched
    assert not runner.few_shot.selects
    assert 'val' not in runner.few_shot._features  # noqa: never encoded
    # The same run under 'val' searches and moves away from them.
    runner = build_runner(tmp_path, tiny_clip, image_folders, 'val')
    runner.test()
    assert runner.model.head.searched


def test_training_under_none_never_validates_and_keeps_the_last_epoch(
        tmp_path, tiny_clip, image_folders):
    config = tiny_config(
        tmp_path / 'f.py', tiny_clip, image_folders, augment_epoch=2,
        schedule='tip_adapter_f',
        extra='train_cfg = dict(max_epochs=3, global_batch_size=4)\n'
        "few_shot_cfg = dict(augment_epoch=2, protocol='none')\n")
    work = tmp_path / 'f_none'
    output = run_tool(python_tool('train.py', str(config), '--work-dir',
                                  str(work)), timeout=600)
    assert 'Epoch(val)' not in output
    assert 'Loading the best epoch' not in output
    assert "protocol='none': validation-free hyperparameters" in output
    assert 'Hyperparameter search' not in output
    last = torch.load(work / 'epoch_3.pth', map_location='cpu',
                      weights_only=False)['state_dict']
    final = torch.load(work / 'final_searched.pth', map_location='cpu',
                       weights_only=False)['state_dict']
    assert torch.equal(last['head.cache.keys'], final['head.cache.keys'])


def test_full_batch_is_one_iteration_per_epoch(tmp_path, tiny_clip,
                                               image_folders):
    config = tiny_config(
        tmp_path / 'full.py', tiny_clip, image_folders, augment_epoch=2,
        schedule='tip_adapter_f',
        extra="train_cfg = dict(max_epochs=2, global_batch_size='all')\n")
    cfg = Config.fromfile(str(config))
    cfg.work_dir = str(tmp_path / 'full')
    runner = RUNNERS.build(cfg)
    runner.model.init_weights()
    loop = runner.train_loop
    # 3 classes x 4 shots, one view per image per epoch (ViewCyclingSampler)
    assert loop.dataloader.batch_size == 12
    assert len(loop.dataloader) == 1
    with pytest.raises(ValueError, match="global_batch_size must be an int "
                       "or 'all', got 'full'"):
        type(loop).prepare_dataloader(runner, cfg.train_dataloader, 'full')
