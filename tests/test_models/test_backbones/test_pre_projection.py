"""Towers that stop before CLIP's last visual projection (ProLIP): their
output, then the projection they expose, is the tower's usual output; the
pre-projection features are an independent computation's; the feature
store keeps them apart from projected ones."""
import copy
import json

import open_clip
import pytest
import torch
import torch.nn.functional as F

import tip_adapter_mm  # noqa: F401  (registers the modules)
from mmpretrain.registry import MODELS
from tip_adapter_mm.engine.feature_store import FeatureStore
from tip_adapter_mm.engine.few_shot_builder import encoder_description
from tip_adapter_mm.models import CLIPFewShotClassifier, OpenCLIPVisualBackbone

#: A tiny open_clip ResNet (ModifiedResNet, attention pool 256 -> 24).
TINY_RN = {
    'embed_dim': 24,
    'vision_cfg': {'image_size': 64, 'layers': [1, 1, 1, 1], 'width': 8},
    'text_cfg': {'context_length': 77, 'vocab_size': 49408, 'width': 32,
                 'heads': 2, 'layers': 1},
}


@pytest.fixture(scope='module')
def tiny_rn(tmp_path_factory):
    root = tmp_path_factory.mktemp('tiny_rn')
    config = root / 'TinyCLIP-RN-test.json'
    config.write_text(json.dumps(TINY_RN))
    open_clip.add_model_config(str(config))
    torch.manual_seed(0)
    model = open_clip.create_model('TinyCLIP-RN-test')
    # open_clip zeroes each block's last BatchNorm scale; give them values
    # so that the blocks do something
    for name, param in model.visual.named_parameters():
        if name.endswith('bn3.weight'):
            param.data.uniform_(0.5, 1.5)
    checkpoint = root / 'tiny_rn.pt'
    torch.save(model.state_dict(), checkpoint)
    return dict(model_name='TinyCLIP-RN-test', pretrained=str(checkpoint),
                model_config_file=str(config))


def both_outputs(clip, size):
    projected = OpenCLIPVisualBackbone(**clip)
    pre = OpenCLIPVisualBackbone(**clip, output='pre_projection')
    x = torch.randn(3, 3, size, size, generator=torch.Generator().
                    manual_seed(1))
    with torch.no_grad():
        (y, ), (h, ) = projected(x), pre(x)
    return projected, pre, x, y, h


def test_open_clip_resnet_stops_before_c_proj(tiny_rn):
    projected, pre, x, y, h = both_outputs(tiny_rn, 64)
    assert h.shape == (3, 256) and pre.out_channels == 256
    assert y.shape == (3, 24) and projected.out_channels == 24
    weight, bias = pre.visual_projection()
    assert weight.shape == (256, 24) and bias.shape == (24, )
    torch.testing.assert_close(h @ weight + bias, y, rtol=1e-4, atol=1e-5)
    # Independently: torch's multi-head attention over the same tokens with
    # an identity output projection (all tokens as queries; the first is
    # the pooled one).
    pool = projected.visual.attnpool
    with torch.no_grad():
        fmap = projected.visual.layer4(projected.visual.layer3(
            projected.visual.layer2(projected.visual.layer1(
                projected.visual.stem(x)))))
        tokens = fmap.flatten(2).permute(2, 0, 1)  # (HW, B, C)
        tokens = torch.cat([tokens.mean(0, keepdim=True), tokens])
        tokens = tokens + pool.positional_embedding[:, None]
        expected, _ = F.multi_head_attention_forward(
            tokens, tokens, tokens, 256, pool.num_heads, None,
            torch.cat([pool.q_proj.bias, pool.k_proj.bias,
                       pool.v_proj.bias]), None, None, False, 0.0,
            torch.eye(256), torch.zeros(256), training=False,
            need_weights=False, use_separate_proj_weight=True,
            q_proj_weight=pool.q_proj.weight,
            k_proj_weight=pool.k_proj.weight,
            v_proj_weight=pool.v_proj.weight)
    torch.testing.assert_close(h, expected[0], rtol=1e-4, atol=1e-5)
    assert projected.visual_projection() is None  # nothing left to apply


def test_open_clip_vit_stops_before_proj(tiny_clip):
    projected, pre, x, y, h = both_outputs(tiny_clip, 224)
    weight, bias = pre.visual_projection()
    assert bias is None and weight.shape == (32, 32)
    torch.testing.assert_close(weight, projected.visual.proj)
    torch.testing.assert_close(h @ weight, y, rtol=1e-4, atol=1e-5)
    # Independently: the class token after ln_post, caught by a hook.
    caught = {}
    projected.visual.ln_post.register_forward_hook(
        lambda module, args, out: caught.update(out=out))
    with torch.no_grad():
        projected(x)
    torch.testing.assert_close(h, caught['out'][:, 0])
    # The frozen weights stay out of checkpoints, as the projected tower's.
    assert pre.state_dict() == {}
    assert not any(p.requires_grad for p in pre.parameters())


def test_unknown_output_and_unknown_tower_are_named(tiny_clip, tmp_path):
    with pytest.raises(ValueError, match=r"output must be one of.*'bogus'"):
        OpenCLIPVisualBackbone(**tiny_clip, output='bogus')
    config = tmp_path / 'TinyTimm-test.json'
    config.write_text(json.dumps({
        'embed_dim': 16,
        'vision_cfg': {'timm_model_name': 'resnet18', 'image_size': 64,
                       'timm_model_pretrained': False, 'timm_pool': 'avg',
                       'timm_proj': 'linear'},
        'text_cfg': TINY_RN['text_cfg']}))
    with pytest.raises(ValueError, match=r"'TinyTimm-test' is a TimmModel.*"
                       r"last projection is not known"):
        OpenCLIPVisualBackbone('TinyTimm-test', None, str(config),
                               output='pre_projection')


def test_mmpretrain_modified_resnet_stops_before_c_proj():
    args = dict(depth=50, base_channels=8, input_size=64, num_attn_heads=4,
                output_dim=24)
    torch.manual_seed(0)
    plain = MODELS.build(dict(type='ModifiedResNet', **args)).eval()
    pre = MODELS.build(dict(type='PreProjectionModifiedResNet',
                            **args)).eval()
    pre.load_state_dict(plain.state_dict())  # same keys: same checkpoints
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y, (h, ) = plain(x), pre(x)
    weight, bias = pre.visual_projection()
    assert h.shape == (2, 256) and weight.shape == (256, 24)
    torch.testing.assert_close(h @ weight + bias, y, rtol=1e-4, atol=1e-5)


def mmpretrain_vit(neck_type):
    return dict(
        type='CLIPFewShotClassifier',
        backbone=dict(
            type='VisionTransformer',
            arch=dict(embed_dims=32, num_layers=1, num_heads=2,
                      feedforward_channels=64),
            img_size=64, patch_size=32, pre_norm=True, final_norm=True,
            out_type='cls_token', patch_cfg=dict(bias=False),
            norm_cfg=dict(type='LN', eps=1e-5)),
        neck=dict(type=neck_type, in_channels=32, out_channels=16),
        head=dict(type='NCMHead', num_classes=3))


def test_mmpretrain_vit_with_the_pre_projection_neck():
    torch.manual_seed(0)
    projected = MODELS.build(mmpretrain_vit('CLIPProjection'))
    pre_cfg = mmpretrain_vit('CLIPPreProjection')
    pre_cfg['head'] = dict(type='ProLIPHead', num_classes=3)
    pre = MODELS.build(pre_cfg)
    state = {k: v for k, v in projected.state_dict().items()
             if not k.startswith('head.')}
    pre.load_state_dict(state, strict=False)
    x = torch.randn(2, 3, 64, 64)
    (y, ), (h, ) = projected.encode_image(x), pre.encode_image(x)
    weight, bias = pre.visual_projection()
    assert bias is None and h.shape == (2, 32)
    torch.testing.assert_close(weight, projected.neck.proj.detach())
    torch.testing.assert_close(h @ weight, y, rtol=1e-4, atol=1e-5)
    # ProLIP on the projecting neck: the error names it
    wrong = mmpretrain_vit('CLIPProjection')
    wrong['head'] = dict(type='ProLIPHead', num_classes=3)
    with pytest.raises(ValueError, match=r'model\.neck \(CLIPProjection\) '
                       r'has no known projection.*CLIPPreProjection'):
        MODELS.build(wrong)


def test_prolip_before_training_is_zero_shot_clip(tiny_rn):
    """Pre-projection features + the tower's projection in ProLIPHead give
    zero-shot CLIP's logits on the projected tower (bias included)."""
    text = dict(type='OpenCLIPTextEncoder', **tiny_rn)
    classes = ['red apple', 'green leaf', 'blue sky']
    zero_shot = CLIPFewShotClassifier(
        backbone=dict(type='OpenCLIPVisualBackbone', **tiny_rn),
        text_encoder=text, head=dict(type='ZeroShotHead', num_classes=3))
    prolip = CLIPFewShotClassifier(
        backbone=dict(type='OpenCLIPVisualBackbone', output='pre_projection',
                      **tiny_rn),
        text_encoder=text, head=dict(type='ProLIPHead', num_classes=3))
    for model in (zero_shot, prolip):
        model.build_zero_shot_weights(classes)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(prolip(x), zero_shot(x), rtol=1e-4,
                                   atol=1e-3)


def test_pre_projection_features_are_a_separate_store_entry(tiny_clip,
                                                            tmp_path):
    model = dict(backbone=dict(type='OpenCLIPVisualBackbone', **tiny_clip))
    pre = copy.deepcopy(model)
    pre['backbone']['output'] = 'pre_projection'
    store = FeatureStore(str(tmp_path))
    paths = {
        store.path('test', dict(kind='features',
                                encoder=encoder_description(m)))
        for m in (model, pre)
    }
    assert len(paths) == 2
    # Configs without the option keep their description (and entries).
    assert 'output' not in encoder_description(model)['backbone']
