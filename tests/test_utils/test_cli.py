"""Command-line overrides: a key the config does not have is an error."""
import pytest
from conftest import CONFIGS, python_tool, run_tool
from mmengine.config import Config

from tip_adapter_mm.utils import check_cfg_options


@pytest.fixture(scope='module')
def cfg():
    return Config.fromfile(str(CONFIGS / 'tip_imagenet_16shot.py'))


def test_existing_keys_and_constructor_arguments_pass(cfg):
    check_cfg_options(cfg, {
        'fewshot_dataloader.dataset.num_shots': 8,
        'fewshot_dataloader.dataset.seed': 2,
        'few_shot_cfg.feature_dir': '/shared/features',
        'few_shot_cfg.augment_epoch': 4,
        'custom_hooks.1.chunk_size': 1024,  # a hook argument
        'model.backbone.cache_dir': '/shared/open_clip',  # a model argument
        'custom_hooks.1.split': 'test',
        'work_dir': 'elsewhere',  # a Runner setting
    })


@pytest.mark.parametrize('key,message', [
    ('fewshot_dataloader.dataset.num_shot',
     "fewshot_dataloader.dataset has no key 'num_shot' and FewShotDataset "
     'takes no such argument'),
    ('model.head.alpah', "model.head has no key 'alpah'"),
    ('custom_hooks.7.split', 'custom_hooks is a list of 2 items'),
    # BuildCacheHook takes no arguments any more (few_shot_cfg.feature_dir)
    ('custom_hooks.0.cache_dir',
     "custom_hooks.0 has no key 'cache_dir' and BuildCacheHook takes no "
     'such argument'),
    ('modle.head.alpha', "the config has no key 'modle'"),
])
def test_unknown_keys_are_named(cfg, key, message):
    with pytest.raises(KeyError, match=message):
        check_cfg_options(cfg, {key: 1})


def test_tools_refuse_unknown_keys_before_running(tmp_path):
    output = run_tool(
        python_tool('test.py', str(CONFIGS / 'tip_imagenet_16shot.py'),
                    '--work-dir', str(tmp_path), '--cfg-options',
                    'fewshot_dataloader.dataset.num_shot=8'),
        expect_rc=1)
    assert "no key 'num_shot'" in output
    assert not any(tmp_path.iterdir())  # nothing was started or written
