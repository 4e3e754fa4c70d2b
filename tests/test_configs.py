"""Every experiment config parses and reads like the table it claims."""
import pytest
from conftest import CONFIGS
from mmengine.config import Config

EXPERIMENTS = sorted(p.name for p in CONFIGS.glob('*.py'))


def test_there_are_experiment_configs():
    assert {'tip_imagenet_16shot.py', 'tip_f_imagenet_16shot.py'} <= set(
        EXPERIMENTS)


@pytest.mark.parametrize('name', EXPERIMENTS)
def test_config_parses_with_spec_defaults(name):
    cfg = Config.fromfile(str(CONFIGS / name))
    assert cfg.custom_imports.imports == ['tip_adapter_mm']
    head = cfg.model.head
    assert head.type == 'TipAdapterHead'
    assert (head.num_classes, head.alpha, head.beta) == (1000, 1.17, 1.0)
    assert (tuple(head.search_scale), tuple(head.search_step)) == ((7, 3),
                                                                    (200, 20))
    assert cfg.model.templates == 'imagenet'
    assert cfg.model.backbone.model_name == 'RN50'
    assert cfg.model.backbone.pretrained == 'openai'
    assert cfg.fewshot_dataloader.dataset.num_shots == 16
    assert cfg.custom_hooks[0] == dict(type='BuildCacheHook',
                                       augment_epoch=10)
    is_f = name.startswith('tip_f_')
    assert head.get('train_cache_keys', False) is is_f
    if is_f:
        assert cfg.runner_type == 'FewShotRunner'
        assert cfg.train_cfg.max_epochs == 20
        assert cfg.global_batch_size == 256
        optimizer = cfg.optim_wrapper.optimizer
        assert (optimizer.type, optimizer.lr, optimizer.eps,
                optimizer.weight_decay) == ('AdamW', 1e-3, 1e-4, 0.01)
        assert cfg.param_scheduler.convert_to_iter_based
    reference = 'reference_protocol' in name
    assert (cfg.custom_hooks[1].split == 'test') is reference
    assert (cfg.val_dataloader.dataset.type == 'CLIPImageNet') is reference
