"""Every config parses, builds its model, hooks and loops from the
registries, carries Tip-Adapter's published per-dataset settings (through
its dataset base), builds its datasets lazily without data, and fails
clearly when data is missing."""
import copy

import pytest
from conftest import CONFIGS
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import loops as mmengine_loops

import tip_adapter_mm  # noqa: F401  (registers the plugin's modules)
from mmpretrain.registry import (DATA_SAMPLERS, DATASETS, HOOKS, LOOPS,
                                 METRICS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS,
                                 PARAM_SCHEDULERS, RUNNERS)
from tip_adapter_mm.engine import FewShotRunner
from tip_adapter_mm.models.classifiers import CLIPFewShotClassifier
from tip_adapter_mm.models.heads import FewShotHead
from tip_adapter_mm.models.utils import get_templates

# Tip-Adapter's published settings (paper and reference configs, CLIP
# RN50), written out here independently of the configs:
# dataset -> (templates key, classes, search scale (beta, alpha),
#             initial alpha, Tip-Adapter-F epochs). Initial beta is 1
#             everywhere.
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
INITIAL_BETA = 1.0
#: ImageNet's prompt ensemble in Tip-Adapter: 7 templates.
IMAGENET_TEMPLATES = 7

EXPERIMENTS = sorted(p.name for p in CONFIGS.glob('*.py'))
CUSTOM = [f'custom/{p.name}' for p in sorted(CONFIGS.glob('custom/*.py'))]
ALL_CONFIGS = EXPERIMENTS + CUSTOM
TIP_EXPERIMENTS = [name for name in EXPERIMENTS if name.startswith('tip_')]
#: Experiment configs of other methods on a dataset base.
OTHER_EXPERIMENTS = [
    name for name in EXPERIMENTS if not name.startswith('tip_')
]
#: Experiment prefixes of the other methods that train (a train_cfg).
TRAINED_PREFIXES = ('prolip_', 'clip_adapter_', 'taskres_', 'clap_',
                    'coop_', 'cocoop_', 'clip_lora_', 'vpt_',
                    'maple_', 'meta_adapter_')
#: Methods trained with their official Dassl recipe (warm-up epoch, cosine
#: per epoch, last epoch, nothing searched; the recipes themselves are
#: checked in tests/test_models/test_heads/): prefix -> (global batch,
#: trainable parameters).
DASSL_RECIPES = {
    'clip_adapter_': (32, ['head.adapter_down', 'head.adapter_up']),
    'taskres_': (256, ['head.residual']),
    'clap_': (256, ['head.prototypes']),
    'coop_': (32, ['head.ctx']),
    'cocoop_': (1, ['head.ctx', 'head.meta_down', 'head.meta_down_bias',
                    'head.meta_up', 'head.meta_up_bias']),
    # Not Dassl (AdamW, cosine per iteration), but the same checks hold:
    # last epoch, nothing searched, stored views.
    'meta_adapter_': (64, ['head.q_proj', 'head.k_proj', 'head.gate_weight',
                           'head.gate_bias']),
}
#: few_shot_cfg.augment_epoch of recipes that store another number of
#: views than Tip-Adapter's 10 (ProLIP: 300, one per epoch).
AUGMENT_EPOCH = {'prolip_': 300, 'clip_lora_': 1, 'vpt_': 1, 'maple_': 1}
#: Methods that train inside the image tower (re-encoding the few-shot
#: images; val and test loop over images): prefix -> global batch.
IMAGE_TOWER_RECIPES = {'clip_lora_': 32, 'vpt_': 4, 'maple_': 4}


def dataset_of(name: str) -> str:
    """The dataset of an experiment config's file name."""
    for prefix in ('tip_f_', 'tip_', 'ape_', 'gda_', 'ncm_', 'zero_shot_',
                   'linear_probe_', 'lp_plus_plus_', 'prolip_', 'proker_',
                   'clip_adapter_', 'taskres_', 'clap_', 'coop_',
                   'cocoop_', 'clip_lora_', 'vpt_',
                   'maple_', 'meta_adapter_'):
        if name.startswith(prefix):
            stem = name[len(prefix):]
            break
    else:
        raise ValueError(name)
    return stem.split('_16shot')[0].split('.py')[0]


def dataset_base(cfg: Config) -> Config:
    """The config's dataset base, read on its own."""
    return Config.fromfile(
        str(CONFIGS / '_base_/datasets' / f'{cfg.dataset_name}_fewshot.py'))


def test_new_configs_are_checked():
    assert {'ncm_imagenet_16shot.py', 'zero_shot_imagenet.py',
            'ape_imagenet_16shot.py', 'gda_imagenet_16shot.py'} <= set(
                EXPERIMENTS)


def test_every_dataset_has_both_methods():
    for dataset in SPEC:
        assert f'tip_{dataset}_16shot.py' in EXPERIMENTS
        assert f'tip_f_{dataset}_16shot.py' in EXPERIMENTS


def test_every_dataset_base_follows_the_published_table():
    for dataset, (templates, classes, scale, alpha, epochs) in SPEC.items():
        base = Config.fromfile(
            str(CONFIGS / '_base_/datasets' / f'{dataset}_fewshot.py'))
        assert base.dataset_name == dataset
        assert base.num_classes == classes
        assert base.templates == templates
        assert base.tip_head == dict(
            num_classes=classes, alpha=alpha, search_scale=scale)
        assert base.tip_f_head == dict(base.tip_head, train_cache_keys=True)
        assert base.f_epochs == epochs
    assert len(get_templates('imagenet')) == IMAGENET_TEMPLATES


def dataset_types(node):
    """Every ``type`` of a (nested) dataset config."""
    while isinstance(node, dict):
        if node.get('type') is not None:
            yield node['type']
        node = node.get('dataset')


@pytest.fixture(scope='module', autouse=True)
def open_clip_models_built_once():
    """Each (architecture, weights) of open_clip is created once for the
    whole module and copied for every config that builds it (the configs
    of a backbone differ in their heads, not in their towers)."""
    from tip_adapter_mm.models.backbones import open_clip_visual
    from tip_adapter_mm.models.text_encoders import open_clip_text
    from tip_adapter_mm.models.utils import create_open_clip_model
    built = {}

    def create_once(*args, **kwargs):
        key = repr((args, sorted(kwargs.items())))
        if key not in built:
            built[key] = create_open_clip_model(*args, **kwargs)
        return copy.deepcopy(built[key])

    with pytest.MonkeyPatch.context() as patch:
        for module in (open_clip_visual, open_clip_text):
            patch.setattr(module, 'create_open_clip_model', create_once)
        yield


@pytest.mark.parametrize('name', ALL_CONFIGS)
def test_config_builds_from_the_registries(name):
    """The runner, model (with random weights instead of downloads), hooks,
    loops, metrics, datasets and optimiser of every config resolve in
    MMPretrain's registries."""
    cfg = Config.fromfile(str(CONFIGS / name))
    assert cfg.custom_imports.imports == ['tip_adapter_mm']
    assert RUNNERS.get(cfg.runner_type) is FewShotRunner
    assert cfg.few_shot_cfg.augment_epoch == next(
        (v for p, v in AUGMENT_EPOCH.items() if name.startswith(p)), 10)
    assert cfg.few_shot_cfg.get('feature_dir') is None

    model_cfg = copy.deepcopy(cfg.model.to_dict())
    if model_cfg['backbone'].get('pretrained'):
        model_cfg['backbone']['pretrained'] = None  # no download
    model = MODELS.build(model_cfg)
    assert isinstance(model, CLIPFewShotClassifier)
    assert isinstance(model.head, FewShotHead)
    assert type(model.head).__name__ == cfg.model.head.type
    assert type(model.backbone).__name__ == cfg.model.backbone.type
    # Heads with a zero-shot term (uses_text) need the text tower; heads
    # without one (also GDA / ProKeR without it) run on any backbone.
    if model.head.uses_text:
        assert MODELS.get(cfg.model.text_encoder.type) is not None
    assert model.num_feature_sets == (
        2 if cfg.model.get('second_backbone') else 1)

    hooks = [HOOKS.build(copy.deepcopy(h)) for h in cfg.custom_hooks]
    assert all(isinstance(h, Hook) for h in hooks)
    recipe = next(
        (r for p, r in DASSL_RECIPES.items() if name.startswith(p)), None)
    assert [type(h).__name__ for h in hooks][:2] == [
        'BuildCacheHook', 'HyperparameterSearchHook'
    ]
    if recipe or cfg.get('train_cfg'):  # trained: the best/last epoch kept
        assert type(hooks[2]).__name__ == 'ValidateAfterResumeHook'
    assert cfg.custom_hooks[0] == dict(type='BuildCacheHook')

    image_tower = next((b for p, b in IMAGE_TOWER_RECIPES.items()
                        if name.startswith(p)), None)
    assert model.head.uses_image_tower == (image_tower is not None)
    assert (cfg.val_cfg.type, cfg.test_cfg.type) == (
        ('ValLoop', 'TestLoop') if image_tower else
        ('StoredFeaturesValLoop', 'StoredFeaturesTestLoop'))
    assert issubclass(LOOPS.get(cfg.val_cfg.type), mmengine_loops.ValLoop)
    assert issubclass(LOOPS.get(cfg.test_cfg.type),
                      mmengine_loops.TestLoop)
    for evaluator in (cfg.val_evaluator, cfg.test_evaluator):
        assert METRICS.get(evaluator.type) is not None
    for key in ('fewshot_dataloader', 'val_dataloader', 'test_dataloader'):
        assert DATA_SAMPLERS.get(cfg[key].sampler.type) is not None
        types = list(dataset_types(cfg[key].dataset))
        assert types and all(DATASETS.get(t) is not None for t in types)

    if cfg.get('train_cfg') is not None:
        assert cfg.train_cfg.type == 'FewShotTrainLoop'
        assert issubclass(LOOPS.get(cfg.train_cfg.type),
                          mmengine_loops.EpochBasedTrainLoop)
        assert 'global_batch_size' not in cfg  # now train_cfg's
        if image_tower is not None:  # the few-shot images, re-encoded
            assert cfg.train_cfg.global_batch_size == image_tower
            assert cfg.train_dataloader.dataset == dict(
                type='FewShotDataset')
            assert OPTIM_WRAPPER_CONSTRUCTORS.get(
                cfg.optim_wrapper.constructor) is not None
            schedulers = cfg.param_scheduler
            if not isinstance(schedulers, list):
                schedulers = [schedulers]
            assert all(PARAM_SCHEDULERS.get(s.type) is not None
                       for s in schedulers)
            # The cosine follows train_cfg.max_epochs: no end of its own.
            assert 'end' not in schedulers[-1]
            assert cfg.few_shot_cfg.protocol == 'none'  # the last epoch
            trained = [n for n, p in model.named_parameters()
                       if p.requires_grad]
            assert trained and all(n.startswith('head.') for n in trained)
            return
        if recipe is not None:
            batch, trained = recipe
            assert cfg.train_cfg.global_batch_size == batch
            assert OPTIM_WRAPPER_CONSTRUCTORS.get(
                cfg.optim_wrapper.constructor) is not None
            assert cfg.train_dataloader.dataset.type == 'CachedViewsDataset'
            assert DATA_SAMPLERS.get(
                cfg.train_dataloader.sampler.type) is not None
            assert all(
                PARAM_SCHEDULERS.get(s.type) is not None
                for s in cfg.param_scheduler)
            # The cosine follows train_cfg.max_epochs: no end of its own.
            assert 'T_max' not in cfg.param_scheduler[-1]
            assert 'end' not in cfg.param_scheduler[-1]
            assert cfg.few_shot_cfg.protocol == 'none'  # the last epoch
            assert [n for n, p in model.named_parameters()
                    if p.requires_grad] == trained
            return
        prolip = cfg.model.head.type == 'ProLIPHead'  # full batch
        assert cfg.train_cfg.global_batch_size == ('all' if prolip else 256)
        assert DATA_SAMPLERS.get(
            cfg.train_dataloader.sampler.type) is not None
        types = list(dataset_types(cfg.train_dataloader.dataset))
        assert types and all(DATASETS.get(t) is not None for t in types)
        assert OPTIM_WRAPPER_CONSTRUCTORS.get(
            cfg.optim_wrapper.constructor) is not None
        assert PARAM_SCHEDULERS.get(cfg.param_scheduler.type) is not None
        # The schedule follows train_cfg.max_epochs: no end of its own.
        assert 'T_max' not in cfg.param_scheduler
        assert 'end' not in cfg.param_scheduler
        assert cfg.param_scheduler.convert_to_iter_based
        if prolip:  # only the visual projection trains
            assert [n for n, p in model.named_parameters()
                    if p.requires_grad] == ['head.proj_weight']
            return
        assert getattr(model.head, 'cache', None) is not None
        assert model.head.cache.learnable_keys
        # Only the cache keys train (both key sets with a second cache).
        assert [n for n, p in model.named_parameters() if p.requires_grad
                ] == ['head.cache.keys'] + (['head.second_cache.keys']
                                            if model.num_feature_sets == 2
                                            else [])


@pytest.mark.parametrize('name', TIP_EXPERIMENTS)
def test_config_follows_its_dataset_base_and_the_published_table(name):
    cfg = Config.fromfile(str(CONFIGS / name))
    dataset = dataset_of(name)
    templates, classes, scale, alpha, epochs = SPEC[dataset]
    assert cfg.dataset_name == dataset
    base = dataset_base(cfg)
    is_f = name.startswith('tip_f_')
    head = cfg.model.head

    # The head settings are the dataset base's...
    base_head = base.tip_f_head if is_f else base.tip_head
    for key, value in base_head.items():
        assert head[key] == value, key
    assert cfg.model.templates == base.templates
    if is_f:
        assert cfg.train_cfg.max_epochs == base.f_epochs
    # ... and these are the published ones.
    dual = name.endswith('_dual_cache_resnet50.py')
    assert head.type == ('DualCacheTipAdapterHead'
                         if dual else 'TipAdapterHead')
    assert (head.num_classes, head.alpha, head.beta) == (classes, alpha,
                                                         INITIAL_BETA)
    assert tuple(head.search_scale) == scale
    assert tuple(head.search_step) == (200, 20)
    assert cfg.model.templates == templates
    if dataset == 'imagenet':
        assert len(get_templates(cfg.model.templates)) == IMAGENET_TEMPLATES
    assert head.get('train_cache_keys', False) is is_f

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
    assert cfg.custom_hooks[0] == dict(type='BuildCacheHook')
    assert cfg.few_shot_cfg.augment_epoch == 10
    if is_f:
        assert cfg.runner_type == 'FewShotRunner'
        assert cfg.train_cfg.max_epochs == epochs
        assert 'T_max' not in cfg.param_scheduler
        assert 'end' not in cfg.param_scheduler
        assert cfg.train_cfg.global_batch_size == 256
        optimizer = cfg.optim_wrapper.optimizer
        assert (optimizer.type, optimizer.lr, optimizer.eps,
                optimizer.weight_decay) == ('AdamW', 1e-3, 1e-4, 0.01)
        assert cfg.param_scheduler.convert_to_iter_based
    else:
        assert cfg.get('train_cfg') is None
    reference = 'reference_protocol' in name
    assert cfg.custom_hooks[1] == dict(type='HyperparameterSearchHook')
    assert (cfg.few_shot_cfg.protocol == 'reference_test') is reference
    assert reference or cfg.few_shot_cfg.protocol == 'val'
    # Validation never reads the test split, except in the named option.
    assert (cfg.val_dataloader.dataset == cfg.test_dataloader.dataset) is \
        reference


@pytest.mark.parametrize('name', OTHER_EXPERIMENTS)
def test_other_methods_take_their_dataset_base(name):
    """APE, GDA, NCM and zero-shot CLIP: the dataset's classes and (with a
    text tower) its templates."""
    cfg = Config.fromfile(str(CONFIGS / name))
    dataset = dataset_of(name)
    assert cfg.dataset_name == dataset
    base = dataset_base(cfg)
    assert cfg.model.head.num_classes == base.num_classes == SPEC[dataset][1]
    # The official ImageNet prompts of CLIP-Adapter, TaskRes and CLAP
    # differ from Tip-Adapter's (checked in tests/test_models/test_heads/).
    own_prompts = dataset == 'imagenet' and name.startswith(
        tuple(DASSL_RECIPES))
    if cfg.model.get('text_encoder') is not None:
        assert own_prompts or (
            cfg.model.templates == base.templates == SPEC[dataset][0])
    else:
        # NCM, the linear probe: heads that read no text.
        assert not MODELS.get(cfg.model.head.type).uses_text
    if (dataset == 'imagenet' and cfg.model.get('text_encoder') is not None
            and not own_prompts):
        assert len(get_templates(cfg.model.templates)) == IMAGENET_TEMPLATES
    assert (cfg.get('train_cfg') is None) is not name.startswith(
        TRAINED_PREFIXES)
    assert cfg.fewshot_dataloader.dataset.num_shots == 16
    assert cfg.fewshot_dataloader.dataset.seed == 1
    # Validation never reads the test split.
    assert cfg.val_dataloader.dataset != cfg.test_dataloader.dataset


def inner(dataset_cfg: dict) -> dict:
    while 'dataset' in dataset_cfg:
        dataset_cfg = dataset_cfg['dataset']
    return dataset_cfg


@pytest.mark.parametrize('name', ALL_CONFIGS)
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
    cfg = Config.fromfile(str(CONFIGS / name))
    model = MODELS.build(cfg.model)
    checkpoint = cfg.model.backbone.init_cfg.checkpoint
    assert type(model.backbone).__name__ == cfg.model.backbone.type
    assert not any(p.requires_grad for p in model.backbone.parameters())
    with pytest.raises(FileNotFoundError, match=checkpoint):
        model.init_weights()


@pytest.mark.parametrize('dataset', sorted(SPEC))
def test_linear_probe_and_lp_plus_plus_configs_follow_their_recipes(
        dataset):
    """Linear probe: CLIP's (L-BFGS, 1000 iterations, C on a log grid), no
    text tower. LP++: the official code's (300 epochs, blending step every
    10, momentum 0.9, initial blending 250 x the mean text similarity)."""
    probe = Config.fromfile(
        str(CONFIGS / f'linear_probe_{dataset}_16shot.py'))
    head = probe.model.head
    assert head.type == 'LinearProbeHead'
    assert head.num_classes == SPEC[dataset][1]
    assert probe.model.text_encoder is None
    assert head.C == 0.316 and head.max_iter == 1000
    assert head.c_grid == pytest.approx(
        [10**(k / 2) for k in range(-6, 7)], rel=1e-12)
    lpp = Config.fromfile(str(CONFIGS / f'lp_plus_plus_{dataset}_16shot.py'))
    head = lpp.model.head
    assert head.type == 'LPPlusPlusHead'
    assert head.num_classes == SPEC[dataset][1]
    assert lpp.model.templates == SPEC[dataset][0]
    assert (lpp.model.text_encoder.model_name,
            lpp.model.text_encoder.pretrained) == ('RN50', 'openai')
    assert (head.epochs, head.alpha_update_interval, head.momentum,
            head.init_alpha_scale, head.accumulate_alpha_grad) == (
                300, 10, 0.9, 250.0, True)
    assert 300 % head.snapshot_interval == 0
    for cfg in (probe, lpp):
        assert cfg.model.backbone.model_name == 'RN50'
        assert cfg.get('train_cfg') is None  # fitted, nothing trained
        assert cfg.custom_hooks[0] == dict(type='BuildCacheHook')
        assert cfg.custom_hooks[1].type == 'HyperparameterSearchHook'
