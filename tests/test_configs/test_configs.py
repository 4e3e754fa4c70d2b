"""Every experiment config parses with the SPEC table's settings, builds
its datasets lazily without data, and fails clearly when data is missing."""
import pytest
from conftest import CONFIGS
from mmengine.config import Config

from mmpretrain.registry import DATASETS

# SPEC section 3, written out here independently of the configs:
# dataset -> (templates key, classes, search scale (beta, alpha),
#             initial alpha, Tip-Adapter-F epochs)
SPEC = {
    'imagenet': ('imagenet', 1000, (7, 3), 1.17, 20),
    'caltech101': ('caltech101', 100, (12, 5), 3, 20),
    'dtd': ('dtd', 47, (13, 13), 2, 20),
    'eurosat': ('eurosat', 10, (12, 10), 2, 100),
    'fgvc_aircraft': ('fgvc_aircraft', 100, (30, 30), 5, 20),
    'food101': ('food101', 101, (10, 10), 1.17, 20),
    'flowers102': ('flowers102', 102, (50, 50), 10, 20),
    'oxford_pets': ('oxford_pets', 37, (7, 3), 1.17, 20),
    'stanford_cars': ('stanford_cars', 196, (20, 10), 3, 20),
    'sun397': ('sun397', 397, (12, 10), 1.17, 20),
    'ucf101': ('ucf101', 101, (7, 3), 3, 20),
}
EXPERIMENTS = sorted(p.name for p in CONFIGS.glob('*.py'))
TIP_EXPERIMENTS = [name for name in EXPERIMENTS if name.startswith('tip_')]


def dataset_of(name: str) -> str:
    stem = name[len('tip_f_') if name.startswith('tip_f_') else len('tip_'):]
    return stem.split('_16shot')[0]


def test_every_dataset_has_both_methods():
    for dataset in SPEC:
        assert f'tip_{dataset}_16shot.py' in EXPERIMENTS
        assert f'tip_f_{dataset}_16shot.py' in EXPERIMENTS


@pytest.mark.parametrize('name', TIP_EXPERIMENTS)
def test_config_follows_spec_table(name):
    cfg = Config.fromfile(str(CONFIGS / name))
    templates, classes, scale, alpha, epochs = SPEC[dataset_of(name)]
    assert cfg.custom_imports.imports == ['tip_adapter_mm']
    head = cfg.model.head
    dual = name.endswith('_dual_cache_resnet50.py')
    assert head.type == ('DualCacheTipAdapterHead'
                         if dual else 'TipAdapterHead')
    assert (head.num_classes, head.alpha, head.beta) == (classes, alpha, 1.0)
    assert tuple(head.search_scale) == scale
    assert tuple(head.search_step) == (200, 20)
    assert cfg.model.templates == templates
    backbone, text = cfg.model.backbone, cfg.model.text_encoder
    if name.endswith('_mmpretrain_rn50.py'):
        # MMPretrain's module holding RN50's converted weights
        assert (backbone.type, backbone.depth) == ('ModifiedResNet', 50)
        assert backbone.init_cfg.prefix == 'backbone.'
    elif name.endswith('_mmpretrain_vit_b16.py'):
        assert (backbone.type, cfg.model.neck.type) == (
            'VisionTransformer', 'CLIPProjection')
        assert backbone.patch_size == 16
        assert backbone.init_cfg.checkpoint == \
            cfg.model.neck.init_cfg.checkpoint
    else:
        assert backbone.model_name == 'RN50'
        assert backbone.pretrained == 'openai'
    vit = name.endswith('_vit_b16.py')
    assert (text.model_name, text.pretrained) == (
        'ViT-B-16' if vit else 'RN50', 'openai')
    if dual:
        assert cfg.model.second_backbone.type == 'ResNet'
        assert cfg.model.second_backbone.depth == 50
        assert head.search_mode == 'staged'
    assert cfg.fewshot_dataloader.dataset.num_shots == 16
    assert cfg.fewshot_dataloader.dataset.seed == 1
    assert cfg.custom_hooks[0] == dict(type='BuildCacheHook',
                                       augment_epoch=10)
    is_f = name.startswith('tip_f_')
    assert head.get('train_cache_keys', False) is is_f
    if is_f:
        assert cfg.runner_type == 'FewShotRunner'
        assert cfg.train_cfg.max_epochs == epochs
        assert cfg.param_scheduler.T_max == cfg.param_scheduler.end == epochs
        assert cfg.global_batch_size == 256
        optimizer = cfg.optim_wrapper.optimizer
        assert (optimizer.type, optimizer.lr, optimizer.eps,
                optimizer.weight_decay) == ('AdamW', 1e-3, 1e-4, 0.01)
        assert cfg.param_scheduler.convert_to_iter_based
    reference = 'reference_protocol' in name
    assert (cfg.custom_hooks[1].split == 'test') is reference
    # Validation never reads the test split, except in the named option.
    assert (cfg.val_dataloader.dataset == cfg.test_dataloader.dataset) is \
        reference


def inner(dataset_cfg: dict) -> dict:
    while 'dataset' in dataset_cfg:
        dataset_cfg = dataset_cfg['dataset']
    return dataset_cfg


@pytest.mark.parametrize('name', EXPERIMENTS + [
    f'custom/{p.name}' for p in sorted(CONFIGS.glob('custom/*.py'))
])
def test_datasets_build_lazily_and_fail_clearly_without_data(name, tmp_path):
    cfg = Config.fromfile(str(CONFIGS / name))
    for key in ('fewshot_dataloader', 'val_dataloader', 'test_dataloader'):
        data_cfg = dict(inner(cfg[key].dataset), data_root=str(tmp_path))
        lazy = DATASETS.build(dict(data_cfg, lazy_init=True))
        assert not lazy._fully_initialized
        with pytest.raises(FileNotFoundError, match=str(tmp_path)):
            DATASETS.build(data_cfg)


@pytest.mark.parametrize('name', [
    'tip_imagenet_16shot_mmpretrain_rn50.py',
    'tip_imagenet_16shot_mmpretrain_vit_b16.py',
])
def test_mmpretrain_clip_towers_build_and_name_a_missing_checkpoint(name):
    """The configs build MMPretrain's modules as they are; without the
    converted checkpoint, initialising names the file."""
    import tip_adapter_mm  # noqa: F401
    from mmpretrain.registry import MODELS
    cfg = Config.fromfile(str(CONFIGS / name))
    model = MODELS.build(cfg.model)
    checkpoint = cfg.model.backbone.init_cfg.checkpoint
    assert type(model.backbone).__name__ == cfg.model.backbone.type
    assert not any(p.requires_grad for p in model.backbone.parameters())
    with pytest.raises(FileNotFoundError, match=checkpoint):
        model.init_weights()
