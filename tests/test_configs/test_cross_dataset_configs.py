"""The cross-dataset configs (configs/generalization/cross_dataset/): each
is its method's ImageNet config with the target dataset's loaders, classes
and prompt templates."""
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
