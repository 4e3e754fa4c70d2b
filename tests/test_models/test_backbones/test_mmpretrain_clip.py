"""MMPretrain's CLIP towers (ModifiedResNet, CLIPProjection): the real
modules when MMPretrain's multi-modal dependencies are installed, else
stand-ins that say what to install."""
import pytest
import torch.nn as nn

import tip_adapter_mm  # noqa: F401  (registers the modules)
from mmpretrain.registry import MODELS


def test_clip_towers_are_mmpretrain_modules_or_say_what_to_install():
    from mmengine.registry import Registry

    from mmpretrain.utils.dependency import WITH_MULTIMODAL
    from tip_adapter_mm.models.backbones import register_missing_clip_towers

    # The tests extra installs MMPretrain's multi-modal dependencies: the
    # real modules are registered, by MMPretrain.
    assert WITH_MULTIMODAL
    for name in ('ModifiedResNet', 'CLIPProjection'):
        assert MODELS.get(name).__module__.startswith(
            'mmpretrain.models.multimodal')
    # Without them, a stand-in names the module and the install command.
    registry = Registry('without_multimodal', scope='test_stand_in')
    registry.register_module(name='CLIPProjection', module=nn.Identity)
    register_missing_clip_towers(registry)
    assert registry.get('CLIPProjection') is nn.Identity  # left alone
    with pytest.raises(ImportError, match=r'(?s)ModifiedResNet.*'
                       r'pip install -e "\.\[multimodal\]"'):
        registry.build(dict(type='ModifiedResNet', depth=50))
