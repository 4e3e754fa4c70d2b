"""open_clip towers loaded through the real routes; zero-shot weights."""
import open_clip
import pytest
import torch
import torch.nn.functional as F

from tip_adapter_mm.datasets import check_class_names
from tip_adapter_mm.models import (CLIPFewShotClassifier,
                                   OpenCLIPTextEncoder,
                                   OpenCLIPVisualBackbone)
from tip_adapter_mm.models.utils import get_templates


def reference_model(tiny_clip):
    model = open_clip.create_model(tiny_clip['model_name'])
    model.load_state_dict(torch.load(tiny_clip['pretrained']))
    return model.eval()


def test_backbone_loads_checkpoint_and_is_frozen(tiny_clip):
    backbone = OpenCLIPVisualBackbone(**tiny_clip)
    reference = reference_model(tiny_clip)
    for name, value in reference.visual.state_dict().items():
        assert torch.equal(backbone.visual.state_dict()[name], value), name
    assert all(not p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not backbone.training and not backbone.visual.training
    x = torch.randn(2, 3, 224, 224)
    (feats, ) = backbone(x)
    assert feats.shape == (2, 32) and backbone.out_channels == 32
    with torch.no_grad():
        torch.testing.assert_close(feats, reference.encode_image(x))


def test_missing_checkpoint_names_the_path(tiny_clip, tmp_path):
    missing = str(tmp_path / 'nope' / 'weights.pt')
    with pytest.raises(FileNotFoundError, match='weights.pt.*does not exist'):
        OpenCLIPVisualBackbone(tiny_clip['model_name'], missing)
    with pytest.raises(FileNotFoundError, match="'not-a-tag'.*tags"):
        OpenCLIPVisualBackbone('RN50', 'not-a-tag')
    with pytest.raises(ValueError, match="Unknown open_clip model_name "
                       "'No-Such-Model'"):
        OpenCLIPVisualBackbone('No-Such-Model')


def test_mismatched_checkpoint_names_file_and_model(tiny_clip, tmp_path):
    state = torch.load(tiny_clip['pretrained'])
    state.pop('visual.proj')
    bad = tmp_path / 'mismatched.pt'
    torch.save(state, bad)
    with pytest.raises(RuntimeError,
                       match=r"mismatched\.pt' cannot be loaded as the "
                       r"weights of open_clip model 'TinyCLIP-ViT-test'.*"
                       r"missing keys \(1\): visual\.proj"):
        OpenCLIPVisualBackbone(tiny_clip['model_name'], str(bad))


def test_zero_shot_weights_match_per_class_computation(tiny_clip):
    classes = ['red_apple', 'green leaf', 'blue_sky']
    templates = get_templates('imagenet')
    model = CLIPFewShotClassifier(
        backbone=dict(type='OpenCLIPVisualBackbone', **tiny_clip),
        text_encoder=dict(type='OpenCLIPTextEncoder', batch_size=5,
                          **tiny_clip),
        head=dict(type='TipAdapterHead', num_classes=3),
        templates='imagenet')
    model.build_zero_shot_weights(classes)
    weights = model.head.zero_shot_weights
    assert weights.shape == (32, 3)

    reference = reference_model(tiny_clip)
    tokenizer = open_clip.get_tokenizer(tiny_clip['model_name'])
    for c, name in enumerate(classes):
        prompts = [t.format(name.replace('_', ' ')) for t in templates]
        assert prompts[0] == f"itap of a {name.replace('_', ' ')}."
        with torch.no_grad():
            feats = reference.encode_text(tokenizer(prompts))
        feats = feats / feats.norm(dim=-1, keepdim=True)
        mean = feats.mean(dim=0)
        torch.testing.assert_close(weights[:, c], mean / mean.norm(),
                                   rtol=1e-5, atol=1e-6)
    assert model.head.clip_logit_scale == 100.0


def test_model_logit_scale_option(tiny_clip):
    model = CLIPFewShotClassifier(
        backbone=dict(type='OpenCLIPVisualBackbone', **tiny_clip),
        text_encoder=dict(type='OpenCLIPTextEncoder', **tiny_clip),
        head=dict(type='TipAdapterHead', num_classes=2),
        use_model_logit_scale=True)
    model.build_zero_shot_weights(['a', 'b'])
    expected = reference_model(tiny_clip).logit_scale.exp().item()
    assert model.head.clip_logit_scale == pytest.approx(expected)
    assert expected != pytest.approx(100.0)


def test_class_names_checks(tiny_clip):
    model = CLIPFewShotClassifier(
        backbone=dict(type='OpenCLIPVisualBackbone', **tiny_clip),
        text_encoder=dict(type='OpenCLIPTextEncoder', **tiny_clip),
        head=dict(type='TipAdapterHead', num_classes=3),
        class_names=['cat', 'dog', 'cow'])
    # model.class_names are prompt names: they rename, in label order, but
    # a name of another class at a label is a shifted list.
    with pytest.raises(ValueError, match=r"label 0: 'cat' given, but that "
                       r"is the name of class 1 \('cat'\)"):
        model.build_zero_shot_weights(['bird', 'cat', 'cow'])
    with pytest.raises(ValueError, match='differ in length'):
        check_class_names(['a', 'b'], ['a', 'b', 'c'], 'x', 'y')


def test_classifier_features_are_normalised_raw_features(tiny_clip):
    model = CLIPFewShotClassifier(
        backbone=dict(type='OpenCLIPVisualBackbone', **tiny_clip),
        head=dict(type='TipAdapterHead', num_classes=3))
    x = torch.randn(3, 3, 224, 224)
    (raw, ) = model.encode_image(x)
    (normed, ) = model.extract_feat(x)
    torch.testing.assert_close(normed, F.normalize(raw, dim=-1))
    assert model.data_preprocessor.to_rgb
    torch.testing.assert_close(
        model.data_preprocessor.mean.flatten() / 255,
        torch.tensor([0.48145466, 0.4578275, 0.40821073]))


def test_templates_by_name_or_list():
    assert len(get_templates('imagenet')) == 7
    assert get_templates(['{} texture.']) == ('{} texture.', )
    with pytest.raises(KeyError, match="'imagenett'"):
        get_templates('imagenett')
    with pytest.raises(ValueError, match='exactly one'):
        get_templates(['no placeholder'])


def test_text_encoder_outputs_raw_features(tiny_clip):
    encoder = OpenCLIPTextEncoder(**tiny_clip, batch_size=2)
    feats = encoder(['a photo of a cat.', 'a dog', 'a cow'])
    reference = reference_model(tiny_clip)
    tokens = open_clip.get_tokenizer(tiny_clip['model_name'])(
        ['a photo of a cat.', 'a dog', 'a cow'])
    with torch.no_grad():
        torch.testing.assert_close(feats, reference.encode_text(tokens))
    assert not hasattr(encoder.clip, 'visual')


@pytest.mark.parametrize('head_type', ['TaskResHead', 'CLAPHead'])
def test_text_prototype_heads_get_the_raw_text_norms(tiny_clip, head_type):
    """TaskRes and CLAP train from the raw text features: the classifier
    gives them the norm of each class's mean raw prompt feature."""
    classes = ['red_apple', 'green leaf', 'blue_sky']
    templates = get_templates('imagenet')
    model = CLIPFewShotClassifier(
        backbone=dict(type='OpenCLIPVisualBackbone', **tiny_clip),
        text_encoder=dict(type='OpenCLIPTextEncoder', **tiny_clip),
        head=dict(type=head_type, num_classes=3),
        templates='imagenet')
    model.build_zero_shot_weights(classes)
    reference = reference_model(tiny_clip)
    tokenizer = open_clip.get_tokenizer(tiny_clip['model_name'])
    for c, name in enumerate(classes):
        prompts = [t.format(name.replace('_', ' ')) for t in templates]
        with torch.no_grad():
            raw = reference.encode_text(tokenizer(prompts))
        expected = raw.mean(dim=0).norm()
        assert float(model.head.text_norms[c]) == pytest.approx(
            float(expected), rel=1e-5)
    assert not torch.allclose(model.head.text_norms, torch.ones(3))
    # A head without the raw scale gets none.
    tip = CLIPFewShotClassifier(
        backbone=dict(type='OpenCLIPVisualBackbone', **tiny_clip),
        text_encoder=dict(type='OpenCLIPTextEncoder', **tiny_clip),
        head=dict(type='TipAdapterHead', num_classes=3))
    tip.build_zero_shot_weights(classes)
    assert not hasattr(tip.head, 'text_norms')
