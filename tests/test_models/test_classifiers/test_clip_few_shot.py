"""CLIPFewShotClassifier with a second MMPretrain backbone (or a ResNet
alone): frozen encoders, their normalisation, the features contract of
``forward`` and the fast path on stored features, checked against formulas
written out here in plain torch."""
import pytest
import torch
import torch.nn.functional as F
from mmengine.dataset import default_collate, pseudo_collate

import tip_adapter_mm  # noqa: F401  (registers the modules)
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample
from tip_adapter_mm.datasets import CachedViewsDataset
from tip_adapter_mm.engine import FeatureStore, extract_features
from tip_adapter_mm.structures import EncodedFeatures

#: CLIP's normalisation (0-255 scale), written out independently.
CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]) * 255
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]) * 255

RESNET = dict(type='ResNet', depth=18, base_channels=8, stem_channels=8)
GAP = dict(type='GlobalAveragePooling')


def ref_cache(f, keys, values, beta):
    """``exp(-beta * (1 - f K^T)) @ L`` in plain torch."""
    return torch.exp(-beta * (1 - f @ keys.t())) @ values


def build_model(tiny_clip, head='DualCacheTipAdapterHead', **kwargs):
    cfg = dict(type='CLIPFewShotClassifier',
               backbone=dict(type='OpenCLIPVisualBackbone', **tiny_clip),
               head=dict(type=head, num_classes=3))
    if head == 'DualCacheTipAdapterHead':
        cfg.update(second_backbone=RESNET, second_neck=GAP)
    cfg.update(kwargs)
    return MODELS.build(cfg)


def images(n=2, seed=0):
    return torch.randn(n, 3, 224, 224,
                       generator=torch.Generator().manual_seed(seed))


# -- encoders ----------------------------------------------------------------
def test_classifier_encodes_with_both_frozen_encoders(tiny_clip):
    model = build_model(tiny_clip)
    assert model.num_feature_sets == 2
    x = images()
    f, f2 = model.encode_image(x)
    assert f.shape == (2, 32) and f2.shape == (2, 64)
    n, n2 = model.extract_feat(x)
    torch.testing.assert_close(n, f / f.norm(dim=1, keepdim=True))
    torch.testing.assert_close(n2, f2 / f2.norm(dim=1, keepdim=True))
    assert not torch.allclose(f2.norm(dim=1), torch.ones(2))
    # The second encoder is the ResNet + GAP, on the same input.
    with torch.no_grad():
        direct = model.second_neck(model.second_backbone(x))[-1]
    torch.testing.assert_close(f2, direct)

    for name in ('backbone', 'second_backbone'):
        params = list(getattr(model, name).parameters())
        assert params and all(not q.requires_grad for q in params), name
    assert {n for n, q in model.named_parameters() if q.requires_grad} == set()

    bn_state = {k: v.clone()
                for k, v in model.second_backbone.state_dict().items()}
    model.train()
    assert model.training and model.head.training
    for encoder in (model.backbone, model.second_backbone,
                    model.second_neck):
        assert all(not m.training for m in encoder.modules())
    model.extract_feat(images(4, seed=1))
    for k, v in model.second_backbone.state_dict().items():
        assert torch.equal(v, bn_state[k]), k


def test_second_encoder_gets_its_own_normalisation(tiny_clip):
    mean2, std2 = (100.0, 110.0, 120.0), (50.0, 60.0, 70.0)
    model = build_model(tiny_clip, second_mean=mean2, second_std=std2)
    seen = []
    model.second_backbone.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].clone()))
    x = images()
    _, f2 = model.encode_image(x)
    expected = (x * CLIP_STD.view(3, 1, 1) + CLIP_MEAN.view(3, 1, 1) -
                torch.tensor(mean2).view(3, 1, 1)) / torch.tensor(
                    std2).view(3, 1, 1)
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        direct = model.second_neck(model.second_backbone(expected))[-1]
    torch.testing.assert_close(f2, direct, rtol=1e-4, atol=1e-5)
    # Not saved in checkpoints (they are config, not learned).
    assert not any('second_mean' in k or 'second_std' in k
                   for k in model.state_dict())

    # Without them, the second encoder sees the first one's input.
    plain = build_model(tiny_clip)
    seen.clear()
    plain.second_backbone.register_forward_pre_hook(
        lambda module, args: seen.append(args[0]))
    plain.encode_image(x)
    assert torch.equal(seen[0], x)


def test_classifier_configuration_errors(tiny_clip):
    x = images(1)
    no_neck = build_model(tiny_clip, second_neck=None)
    with pytest.raises(ValueError,
                       match='second_neck.*GlobalAveragePooling'):
        no_neck.encode_image(x)
    resnet_first = MODELS.build(dict(
        type='CLIPFewShotClassifier', backbone=RESNET,
        head=dict(type='CacheOnlyHead', num_classes=3)))
    with pytest.raises(ValueError, match=r'model\.neck.*GlobalAveragePool'):
        resnet_first.encode_image(x)
    with pytest.raises(ValueError, match='DualCacheTipAdapterHead'):
        build_model(tiny_clip, head='TipAdapterHead',
                    second_backbone=RESNET, second_neck=GAP)
    with pytest.raises(ValueError, match='set model.second_backbone'):
        build_model(tiny_clip, second_backbone=None, second_neck=None)
    with pytest.raises(ValueError, match='second_mean.*second_std'):
        build_model(tiny_clip, second_mean=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match='second_mean.*second_std'):
        build_model(tiny_clip, second_std=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match='second_neck is set'):
        build_model(tiny_clip, head='TipAdapterHead', second_neck=GAP)
    # The head must be a few-shot head.
    with pytest.raises(TypeError, match='FewShotHead'):
        MODELS.build(dict(
            type='CLIPFewShotClassifier', backbone=RESNET, neck=GAP,
            head=dict(type='LinearClsHead', num_classes=3, in_channels=64)))


def test_images_and_features_are_separate_arguments(tiny_clip):
    """No shape sniffing: images go to ``inputs``/``encode_image``, encoded
    features to ``forward(feats=...)``, a tuple with one tensor per
    encoder."""
    model = build_model(tiny_clip)
    for not_images in (torch.randn(2, 32), (torch.randn(2, 32), ),
                       torch.randn(3, 224, 224)):
        with pytest.raises(ValueError, match=r'\(B, 3, H, W\).*feats='):
            model.extract_feat(not_images)
    with pytest.raises(ValueError, match='exactly one'):
        model(images(1), feats=(torch.randn(1, 32), torch.randn(1, 64)))
    with pytest.raises(ValueError, match='exactly one'):
        model()
    with pytest.raises(ValueError, match='2 visual encoder'):
        model(feats=(torch.randn(2, 32), ))
    with pytest.raises(TypeError, match='bare tensor'):
        model(feats=torch.randn(2, 32))
    # Raw features are normalised, one tensor per encoder.
    g = torch.Generator().manual_seed(9)
    raw = (3 * torch.randn(4, 32, generator=g),
           2 * torch.randn(4, 64, generator=g))
    n, n2 = model.normalize_features(raw)
    torch.testing.assert_close(n, raw[0] / raw[0].norm(dim=1, keepdim=True))
    torch.testing.assert_close(n2, raw[1] / raw[1].norm(dim=1, keepdim=True))


def test_cache_only_head_on_a_resnet(tiny_clip):
    model = MODELS.build(dict(
        type='CLIPFewShotClassifier', backbone=RESNET, neck=GAP,
        head=dict(type='CacheOnlyHead', num_classes=3)))
    assert not model.needs_zero_shot_weights
    (f, ) = model.extract_feat(images())
    assert f.shape == (2, 64)
    torch.testing.assert_close(f.norm(dim=1), torch.ones(2))


def test_freshly_built_encoders_are_in_eval_mode(tiny_clip):
    model = build_model(tiny_clip)
    state = {k: v.clone()
             for k, v in model.second_backbone.state_dict().items()}
    x = images(4, seed=2)
    _, batch = model.encode_image(x)
    _, single = model.encode_image(x[:2])
    changed = [k for k, v in model.second_backbone.state_dict().items()
               if not torch.equal(v, state[k])]
    assert changed == []
    torch.testing.assert_close(single, batch[:2])
    assert not any(m.training for m in model.second_backbone.modules())


def test_extract_features_gives_second_feats(tiny_clip):
    # eval(): see test_freshly_built_encoders_are_in_eval_mode.
    model = build_model(tiny_clip).eval()
    g = torch.Generator().manual_seed(5)
    data = [
        dict(inputs=torch.randint(0, 256, (3, 224, 224), generator=g,
                                  dtype=torch.uint8),
             data_samples=DataSample(metainfo=dict(
                 sample_idx=i)).set_gt_label(i % 3)) for i in range(3)
    ]
    loader = torch.utils.data.DataLoader(data, batch_size=2,
                                         collate_fn=pseudo_collate)
    out = extract_features(model, loader)
    assert isinstance(out, EncodedFeatures) and out.num_sets == 2
    feats, second = out.feats
    assert feats.shape == (3, 32)
    assert second.shape == (3, 64)
    assert out.labels.tolist() == [0, 1, 2]
    inputs = model.data_preprocessor(pseudo_collate(data))['inputs']
    f, f2 = model.encode_image(inputs)
    torch.testing.assert_close(feats, f, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(second, f2, rtol=1e-4, atol=1e-5)


# -- the fast path: stored views of two encoders -----------------------------
@pytest.mark.parametrize('collate', [pseudo_collate, default_collate])
def test_cached_views_with_second_feats_feed_the_classifier(
        tiny_clip, tmp_path, collate):
    g = torch.Generator().manual_seed(7)
    # float64, as another codebase may store them: float32 in the model.
    feats = 3 * torch.randn(10, 32, generator=g, dtype=torch.float64)
    second = 2 * torch.randn(10, 64, generator=g, dtype=torch.float64)
    labels = torch.arange(10) % 5 % 3
    path = FeatureStore(str(tmp_path)).save(
        'support_views', {'test': 'two encoders'},
        EncodedFeatures(feats=(feats, second), labels=labels))
    data = CachedViewsDataset(path, num_views=2)
    assert len(data) == 10 and data.num_images == 5
    item = data[7]
    assert isinstance(item['feats'], tuple) and len(item['feats']) == 2
    assert torch.equal(item['feats'][0], feats[7].float())
    assert torch.equal(item['feats'][1], second[7].float())
    assert item['data_samples'].gt_label.item() == labels[7].item()

    model = build_model(tiny_clip)
    idx = [7, 2, 9, 0]
    batch = model.data_preprocessor(collate([data[i] for i in idx]))
    assert set(batch) == {'feats', 'data_samples'}
    first_b, second_b = batch['feats']
    assert first_b.dtype == second_b.dtype == torch.float32
    assert torch.equal(first_b, feats[idx].float())
    assert torch.equal(second_b, second[idx].float())
    n, n2 = model.normalize_features(batch['feats'])
    torch.testing.assert_close(n, F.normalize(feats[idx].float(), dim=-1))
    torch.testing.assert_close(n2, F.normalize(second[idx].float(), dim=-1))

    # Tip-Adapter-F's fast path: the loss on cached features.
    head = model.head
    head.set_zero_shot_weights(F.normalize(torch.randn(32, 3, generator=g),
                                           dim=0))
    views = (feats.float().view(2, 5, 32), second.float().view(2, 5, 64))
    head.fit(views, labels[:5])
    losses = model(feats=batch['feats'], data_samples=batch['data_samples'],
                   mode='loss')
    f = feats[idx].float()
    f2 = second[idx].float()
    f_n = f / f.norm(dim=1, keepdim=True)
    f2_n = f2 / f2.norm(dim=1, keepdim=True)
    keys = F.normalize(views[0].mean(0), dim=-1)
    keys2 = F.normalize(views[1].mean(0), dim=-1)
    values = F.one_hot(labels[:5], 3).float()
    logits = (100.0 * f_n @ head.zero_shot_weights +
              ref_cache(f_n, keys, values, 1.0) +
              ref_cache(f2_n, keys2, values, 1.0))
    torch.testing.assert_close(losses['loss'],
                               F.cross_entropy(logits, labels[idx]))
    # The other modes on the same features.
    torch.testing.assert_close(
        model(feats=batch['feats'], mode='tensor'), logits)
    preds = model(feats=batch['feats'], data_samples=batch['data_samples'],
                  mode='predict')
    assert [int(p.pred_label) for p in preds] == logits.argmax(1).tolist()
