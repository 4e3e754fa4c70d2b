"""The classifier's init_weights: every encoder's ``Pretrained`` init_cfg
(the second backbone's too) must fill it, or it fails loudly where MMEngine
would only warn; and it initialises once."""
import pytest
import torch

import tip_adapter_mm  # noqa: F401  (registers the modules)
from mmpretrain.registry import MODELS

RESNET = dict(type='ResNet', depth=18, base_channels=8, stem_channels=8)
GAP = dict(type='GlobalAveragePooling')


def resnet_checkpoint(path, seed=0, wrap_prefix='', **overrides):
    """A ResNet's weights (other than a fresh one's) saved as MMEngine
    checkpoints are: ``{'state_dict': ...}``, keys under ``wrap_prefix``."""
    torch.manual_seed(seed)
    net = MODELS.build(dict(RESNET, **overrides))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    state = {wrap_prefix + k: v.clone() for k, v in net.state_dict().items()}
    torch.save(dict(state_dict=state), path)
    return {k[len(wrap_prefix):]: v for k, v in state.items()}


def build_model(second_init_cfg=None):
    second = dict(RESNET)
    if second_init_cfg is not None:
        second['init_cfg'] = second_init_cfg
    return MODELS.build(dict(
        type='CLIPFewShotClassifier', backbone=RESNET, neck=GAP,
        second_backbone=second, second_neck=GAP,
        head=dict(type='DualCacheTipAdapterHead', num_classes=3)))


def test_no_pretrained_init_cfg_nothing_to_check():
    model = build_model()
    model.init_weights()
    assert model.is_init


@pytest.mark.parametrize('prefix', [None, 'backbone.'])
def test_second_backbone_loads_its_checkpoint_once(tmp_path, prefix):
    path = tmp_path / 'resnet.pth'
    expected = resnet_checkpoint(path, wrap_prefix=prefix or '')
    init_cfg = dict(type='Pretrained', checkpoint=str(path))
    if prefix:
        init_cfg['prefix'] = prefix
    model = build_model(init_cfg)
    model.init_weights()
    state = model.second_backbone.state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
    # Idempotent: asked again (the runner may), nothing is re-initialised.
    with torch.no_grad():
        model.second_backbone.conv1.weight.add_(1.0)
        model.backbone.conv1.weight.add_(1.0)
    changed = model.second_backbone.conv1.weight.clone()
    first = model.backbone.conv1.weight.clone()
    model.init_weights()
    assert torch.equal(model.second_backbone.conv1.weight, changed)
    assert torch.equal(model.backbone.conv1.weight, first)


def test_shape_mismatch_of_the_second_backbone_is_an_error(tmp_path):
    path = tmp_path / 'wider.pth'
    resnet_checkpoint(path, base_channels=16, stem_channels=16)
    model = build_model(dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(ValueError) as err:
        model.init_weights()
    message = str(err.value)
    assert message.startswith('model.second_backbone: checkpoint')
    assert 'shape mismatches' in message
    assert 'conv1.weight: expected [8, 3, 7, 7], found [16, 3, 7, 7]' in \
        message


def test_checkpoint_under_another_prefix_is_an_error(tmp_path):
    path = tmp_path / 'classifier.pth'
    resnet_checkpoint(path, wrap_prefix='backbone.')
    model = build_model(dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(ValueError, match=r"(?s)model\.second_backbone.*"
                       r"missing keys.*conv1\.weight.*need a prefix"):
        model.init_weights()


def test_missing_checkpoint_file_is_named(tmp_path):
    missing = tmp_path / 'nowhere.pth'
    model = build_model(dict(type='Pretrained', checkpoint=str(missing)))
    # The checkpoint loader (tip_adapter_mm.utils.checkpoint) names it.
    with pytest.raises(FileNotFoundError, match='nowhere.pth'):
        model.init_weights()
