"""The cross-dataset configs (configs/generalization/cross_dataset/): each
is its method's ImageNet config with the target dataset's loaders, classes
and prompt templates; the domain-shift configs
(configs/generalization/<source>_to_imagenet_*.py): each is its ImageNet
config with only the test set and metric changed."""
import copy

import pytest
from conftest import CONFIGS
from test_generalization_configs import (CLASSES, CROSS, METHODS,
                                         TARGET_KEYS, load, without)

CROSS_PAIRS = sorted(
    (m, d) for m in METHODS for d in CLASSES if d != 'imagenet')


@pytest.mark.parametrize('method,dataset', CROSS_PAIRS)
def test_cross_dataset_configs_take_the_targets_classes(method, dataset):
    source = ('zero_shot_imagenet' if method == 'zero_shot' else
              f'{method}_imagenet_16shot')
    cfg = load(CROSS / f'{source}_to_{dataset}.py')
    imagenet = load(CONFIGS / f'{source}.py')
    target = load(CONFIGS / '_base_/datasets' / f'{dataset}_fewshot.py')
    assert cfg.dataset_name == dataset
    assert cfg.model.head.num_classes == CLASSES[dataset]
    assert cfg.model.templates == target.templates
    for key in ('fewshot_dataloader', 'val_dataloader', 'test_dataloader'):
        mine, theirs = cfg[key].to_dict(), target[key].to_dict()
        if key == 'fewshot_dataloader':  # the ImageNet config's transform
            pipeline = imagenet[key].dataset.dataset.pipeline
            assert mine['dataset']['dataset'].pop('pipeline') == pipeline
            theirs['dataset']['dataset'].pop('pipeline')
        assert mine == theirs
    assert without(cfg, TARGET_KEYS, ('num_classes', )) | dict(
        model=None) == without(imagenet, TARGET_KEYS) | dict(model=None)
    model = copy.deepcopy(cfg.model.to_dict())
    source_model = copy.deepcopy(imagenet.model.to_dict())
    for m in (model, source_model):
        m.pop('templates'), m['head'].pop('num_classes')
    assert model == source_model


DOMAIN_SHIFT = sorted(
    p.name for p in (CONFIGS / 'generalization').glob('*_to_imagenet_*.py'))
#: Keys a domain-shift config changes (its dataset base's names of the
#: test set too).
TEST_KEYS = ('test_dataloader', 'test_evaluator', 'test_dataset_name',
             'test_data_root')


@pytest.mark.parametrize('name', DOMAIN_SHIFT)
def test_domain_shift_configs_change_only_the_test_set(name):
    source, target = name[:-3].split('_to_')
    cfg = load(CONFIGS / 'generalization' / name)
    imagenet = load(CONFIGS / f'{source}.py')
    assert without(cfg, TEST_KEYS, ()) == without(imagenet, TEST_KEYS, ())
    assert cfg.test_dataset_name == target
    kind = dict(imagenet_a='ImageNetA', imagenet_r='ImageNetR',
                imagenet_sketch='ImageNetSketch',
                imagenet_v2='ImageNetV2')[target]
    test_set = cfg.test_dataloader.dataset
    assert test_set.type == kind
    assert test_set.pipeline == imagenet.test_dataloader.dataset.pipeline
    assert cfg.test_evaluator.type == (
        'SubsetAccuracy' if target in ('imagenet_a', 'imagenet_r') else
        'StableAccuracy')
    for key in ('test_dataloader', 'test_evaluator'):
        a, b = cfg[key].to_dict(), imagenet[key].to_dict()
        a.pop('dataset', None), b.pop('dataset', None)
        a.pop('type', None), b.pop('type', None)
        assert a == b  # batch, workers, sampler, topk
