"""The configs of the base-to-new and cross-dataset settings
(configs/generalization/base_to_new/, cross_dataset/): every dataset base
splits its classes as CoCoOp does, every experiment config is its method's
few-shot config with only the data and the class count changed, every
``_new`` config is the complement of its ``_base`` one, every cross-dataset
config is the ImageNet config with the target's loaders, classes and
prompts; a config per method builds from the registries."""
import copy
import functools
import math

import pytest
from conftest import CONFIGS
from mmengine.config import Config

import tip_adapter_mm  # noqa: F401  (registers the plugin's modules)
from mmpretrain.registry import DATASETS, MODELS

#: The classes of each dataset (written out here, independently of the
#: dataset bases).
CLASSES = {
    'caltech101': 100, 'dtd': 47, 'eurosat': 10, 'fgvc_aircraft': 100,
    'flowers102': 102, 'food101': 101, 'imagenet': 1000, 'oxford_pets': 37,
    'stanford_cars': 196, 'sun397': 397, 'ucf101': 101,
}
#: Methods that run on classes they were not adapted on (a class-agnostic
#: learned part); every one has configs for every dataset.
METHODS = ('zero_shot', 'coop', 'cocoop', 'clip_adapter', 'prolip', 'vpt',
           'maple', 'meta_adapter', 'clip_lora')
B2N = CONFIGS / 'generalization' / 'base_to_new'
CROSS = CONFIGS / 'generalization' / 'cross_dataset'
#: Keys a setting's config changes; everything else is its method's.
DATA_KEYS = ('fewshot_dataloader', 'val_dataloader', 'test_dataloader',
             'base_classes', 'new_classes', 'tip_head', 'tip_f_head')
TARGET_KEYS = DATA_KEYS + ('dataset_type', 'dataset_name', 'data_root',
                           'num_classes', 'templates', 'holdout', 'f_epochs')


@functools.lru_cache(maxsize=None)
def load(path):
    """A config, read once per test session (the tests never change
    one)."""
    return Config.fromfile(str(path))


def clip_lora_epochs(num_classes):
    """CLIP-LoRA's 500 x 16 steps of batch 32 over 16 shots of
    ``num_classes`` classes, in whole epochs (its configs' rule)."""
    steps_per_epoch = math.ceil(16 * num_classes / 32)
    return math.ceil(500 * 16 / steps_per_epoch)


def without_epochs(cfg_dict):
    """A config dict without ``train_cfg.max_epochs``."""
    cfg_dict['train_cfg'].pop('max_epochs')
    return cfg_dict


def split(num_classes):
    """(base, new): the first ceil(N / 2) labels and the rest."""
    base = (num_classes + 1) // 2
    return base, num_classes - base


def few_shot_config(method, dataset):
    """The method's config of the few-shot setting on ``dataset``."""
    name = (f'zero_shot_{dataset}.py' if method == 'zero_shot' else
            f'{method}_{dataset}_16shot.py')
    return load(CONFIGS / name)


def without(cfg, keys, head_keys=('num_classes', )):
    """The config as a dict without ``keys`` and the head's
    ``head_keys``."""
    out = {k: v for k, v in copy.deepcopy(cfg.to_dict()).items()
           if k not in keys}
    for key in head_keys:
        out['model']['head'].pop(key, None)
    return out


def loaders(cfg):
    """The inner datasets of the three loaders (below the few-shot and
    holdout wrappers)."""
    fewshot = cfg.fewshot_dataloader.dataset.dataset
    val = cfg.val_dataloader.dataset
    if val.type == 'HoldoutDataset':
        val = val.dataset
    return fewshot, val, cfg.test_dataloader.dataset


B2N_PAIRS = sorted(
    (m, d) for m in METHODS for d in CLASSES)


def test_every_method_and_dataset_has_both_configs():
    names = {p.name for p in B2N.glob('*.py')}
    for method, dataset in B2N_PAIRS:
        assert f'{method}_{dataset}_base.py' in names
        assert f'{method}_{dataset}_new.py' in names
    # Every _new config has its _base config.
    for name in names:
        if name.endswith('_new.py'):
            assert name.replace('_new.py', '_base.py') in names
    cross = {p.name for p in CROSS.glob('*.py')}
    for method in METHODS:
        source = ('zero_shot_imagenet' if method == 'zero_shot' else
                  f'{method}_imagenet_16shot')
        assert (CONFIGS / f'{source}.py').is_file()
        for dataset in CLASSES:
            if dataset != 'imagenet':
                assert f'{source}_to_{dataset}.py' in cross


@pytest.mark.parametrize('dataset', sorted(CLASSES))
def test_dataset_bases_split_the_classes(dataset):
    cfg = load(CONFIGS / '_base_/datasets' / f'{dataset}_base_to_new.py')
    plain = load(CONFIGS / '_base_/datasets' / f'{dataset}_fewshot.py')
    n = CLASSES[dataset]
    assert cfg.num_classes == plain.num_classes == n
    assert cfg.base_classes == math.ceil(n / 2)
    assert cfg.base_classes + cfg.new_classes == n
    assert cfg.tip_head.num_classes == cfg.base_classes
    assert cfg.tip_f_head.num_classes == cfg.base_classes
    for wrapped, inner in zip(loaders(cfg), loaders(plain)):
        assert wrapped.type == 'BaseToNewDataset'
        assert wrapped.subset == 'base'
        assert wrapped.dataset == inner
    # Everything else is the plain base's (the wrappers' own settings too).
    assert without(cfg, DATA_KEYS, ()) == without(plain, DATA_KEYS, ())
    for key in ('fewshot_dataloader', 'val_dataloader', 'test_dataloader'):
        a, b = cfg[key].to_dict(), plain[key].to_dict()
        a.pop('dataset'), b.pop('dataset')
        assert a == b
    assert cfg.fewshot_dataloader.dataset.type == 'FewShotDataset'
    assert cfg.fewshot_dataloader.dataset.num_shots == 16
    if dataset == 'imagenet':  # the held-out val of the base classes
        assert cfg.val_dataloader.dataset.type == 'HoldoutDataset'
        assert cfg.val_dataloader.dataset.num_per_class == 10
        assert cfg.fewshot_dataloader.dataset.holdout == dict(
            num_per_class=10, seed=0)


@pytest.mark.parametrize('method,dataset', B2N_PAIRS)
def test_base_configs_are_the_few_shot_ones_on_the_base_classes(
        method, dataset):
    cfg = load(B2N / f'{method}_{dataset}_base.py')
    reference = few_shot_config(method, dataset)
    base, new = split(CLASSES[dataset])
    assert cfg.model.head.num_classes == base
    assert reference.model.head.num_classes == CLASSES[dataset]
    mine, theirs = without(cfg, DATA_KEYS), without(reference, DATA_KEYS)
    if method == 'clip_lora':  # the same number of steps on fewer images
        assert cfg.train_cfg.max_epochs == clip_lora_epochs(base)
        assert reference.train_cfg.max_epochs == clip_lora_epochs(
            CLASSES[dataset])
        mine, theirs = without_epochs(mine), without_epochs(theirs)
    assert mine == theirs
    for wrapped, inner in zip(loaders(cfg), loaders(reference)):
        assert (wrapped.type, wrapped.subset) == ('BaseToNewDataset',
                                                  'base')
        assert wrapped.dataset == inner
    assert cfg.fewshot_dataloader.dataset.num_shots == 16


@pytest.mark.parametrize('method,dataset', B2N_PAIRS)
def test_new_configs_test_the_complement(method, dataset):
    new_cfg = load(B2N / f'{method}_{dataset}_new.py')
    base_cfg = load(B2N / f'{method}_{dataset}_base.py')
    base, new = split(CLASSES[dataset])
    assert new_cfg.model.head.num_classes == new
    assert without(new_cfg, DATA_KEYS) == without(base_cfg, DATA_KEYS)
    for wrapped, base_wrapped in zip(loaders(new_cfg), loaders(base_cfg)):
        assert (wrapped.type, wrapped.subset) == ('BaseToNewDataset', 'new')
        assert wrapped.dataset == base_wrapped.dataset
    assert new_cfg.fewshot_dataloader.dataset.num_shots == 16


def built_model(cfg):
    model_cfg = copy.deepcopy(cfg.model.to_dict())
    model_cfg['backbone']['pretrained'] = None  # no download
    return MODELS.build(model_cfg)


@pytest.mark.parametrize('method', METHODS)
def test_a_config_per_method_builds_and_names_missing_data(method,
                                                           tmp_path):
    """DTD's _new config (23 outputs) builds its model from the
    registries (the _base and cross-dataset configs differ from configs
    that tests/test_configs/test_configs.py builds only in the data and the
    class count, checked above); its test set names a missing data
    root."""
    for path, outputs in ((B2N / f'{method}_dtd_new.py', 23), ):
        cfg = load(path)
        model = built_model(cfg)
        assert type(model.head).__name__ == cfg.model.head.type
        assert model.head.num_classes == outputs
        test_set = copy.deepcopy(cfg.test_dataloader.dataset.to_dict())
        inner = test_set.get('dataset', test_set)
        inner['data_root'] = str(tmp_path / 'missing')
        with pytest.raises(FileNotFoundError, match=str(tmp_path)):
            DATASETS.build(test_set)
