"""Mixed encoders: the cache-only head, the two-cache head and its staged
search, and the classifier with a second MMPretrain backbone, each checked
against formulas written out here in plain torch."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.dataset import default_collate, pseudo_collate

import tip_adapter_mm  # noqa: F401  (registers the modules)
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample
from tip_adapter_mm.datasets import CachedViewsDataset
from tip_adapter_mm.engine import grid_search, save_search_report
from tip_adapter_mm.engine.feature_extraction import extract_features
from tip_adapter_mm.models import (CacheOnlyHead, DualCacheTipAdapterHead,
                                   FeatureOrImageDataPreprocessor,
                                   TipAdapterHead)

#: CLIP's normalisation (0-255 scale), written out independently.
CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]) * 255
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]) * 255


# -- helpers ----------------------------------------------------------------
def unit(*shape, g):
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def ref_grid(scale, steps):
    """The reference search's linear grid."""
    return [i * (scale - 0.1) / steps + 0.1 for i in range(steps)]


def ref_cache(f, keys, values, beta):
    """``exp(-beta * (1 - f K^T)) @ L`` in plain torch."""
    return torch.exp(-beta * (1 - f @ keys.t())) @ values


def random_dual(num=9, c=16, c2=12, classes=5, shots=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    key_labels = torch.arange(classes).repeat_interleave(shots)
    return dict(
        f=unit(num, c, g=g), f2=unit(num, c2, g=g),
        keys=unit(classes * shots, c, g=g),
        keys2=unit(classes * shots, c2, g=g),
        values=F.one_hot(key_labels, classes).float(),
        weights=F.normalize(torch.randn(c, classes, generator=g), dim=0))


def dual_head(p, **kwargs):
    head = DualCacheTipAdapterHead(num_classes=p['values'].shape[1],
                                   **kwargs)
    head.set_zero_shot_weights(p['weights'])
    head.set_cache(p['keys'], p['values'])
    head.set_second_cache_keys(p['keys2'])
    return head


def tip_head(p, **kwargs):
    head = TipAdapterHead(num_classes=p['values'].shape[1], **kwargs)
    head.set_zero_shot_weights(p['weights'])
    head.set_cache(p['keys'], p['values'])
    return head


def search_problem(helps, seed=0, num=120, c=16, c2=12, classes=5,
                   shots=4):
    """Search data. ``helps='second'``: f and the first keys are noise, f2
    and the second keys cluster by class. ``helps='first'``: the other way
    round, with f so clean that Tip-Adapter alone is 100% correct."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (num, ), generator=g)
    key_labels = torch.arange(classes).repeat_interleave(shots)
    centres = unit(classes, c, g=g)
    centres2 = unit(classes, c2, g=g)

    def clustered(centres, lab, noise):
        return F.normalize(centres[lab] + noise * torch.randn(
            len(lab), centres.shape[1], generator=g), dim=-1)

    if helps == 'second':
        f, keys = unit(num, c, g=g), unit(len(key_labels), c, g=g)
        weights = F.normalize(torch.randn(c, classes, generator=g), dim=0)
        f2 = clustered(centres2, labels, 0.25)
        keys2 = clustered(centres2, key_labels, 0.25)
    else:
        f = clustered(centres, labels, 0.1)
        keys = clustered(centres, key_labels, 0.1)
        weights = centres.t().contiguous()
        f2, keys2 = unit(num, c2, g=g), unit(len(key_labels), c2, g=g)
    p = dict(f=f, f2=f2, keys=keys, keys2=keys2, weights=weights,
             values=F.one_hot(key_labels, classes).float())
    return p, labels


@pytest.fixture
def one_thread():
    """Thousands of tiny ops: threads only add overhead (and contention
    on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def counts_of(result):
    """Correct predictions per grid point from the accuracy grid."""
    return (result.accuracy_grid * result.num_samples / 100).round().long()


# -- 1. two-cache logits ----------------------------------------------------
@pytest.mark.parametrize('alpha,beta', [(1.17, 1.0), (3.0, 5.5)])
def test_alpha2_zero_is_exactly_tip_adapter(alpha, beta):
    p = random_dual()
    dual = dual_head(p, alpha=alpha, beta=beta, alpha2=0.0, beta2=3.3)
    tip = tip_head(p, alpha=alpha, beta=beta)
    logits = dual((p['f'], p['f2']))
    assert logits.shape == (9, 5)
    assert torch.equal(logits, tip((p['f'], )))


@pytest.mark.parametrize('alpha,beta,alpha2,beta2',
                         [(1.0, 1.0, 1.0, 1.0), (2.5, 4.0, 0.7, 6.5),
                          (0.0, 3.0, 2.0, 0.5)])
def test_dual_logits_follow_the_formula(alpha, beta, alpha2, beta2):
    p = random_dual(seed=1)
    head = dual_head(p, alpha=alpha, beta=beta, alpha2=alpha2, beta2=beta2,
                     clip_logit_scale=50.0)
    f, f2, W, K, K2, L = (p[k].double() for k in ('f', 'f2', 'weights',
                                                  'keys', 'keys2', 'values'))
    expected = (50.0 * f @ W + alpha * torch.exp(-beta * (1 - f @ K.t())) @ L
                + alpha2 * torch.exp(-beta2 * (1 - f2 @ K2.t())) @ L)
    logits = head((p['f'], p['f2']))
    torch.testing.assert_close(logits.double(), expected, rtol=1e-5,
                               atol=1e-4)
    # The second cache does matter when alpha2 != 0.
    assert not torch.allclose(logits, tip_head(
        p, alpha=alpha, beta=beta, clip_logit_scale=50.0)((p['f'], )))


# -- 2. cache-only head ----------------------------------------------------
def cache_only_problem(seed=0, num=60, c=16, classes=4, shots=3):
    g = torch.Generator().manual_seed(seed)
    centres = unit(classes, c, g=g)
    labels = torch.randint(0, classes, (num, ), generator=g)
    key_labels = torch.arange(classes).repeat_interleave(shots)
    f = F.normalize(centres[labels] + 1.2 * torch.randn(num, c, generator=g),
                    dim=-1)
    keys = F.normalize(
        centres[key_labels] + 1.2 * torch.randn(len(key_labels), c,
                                                generator=g), dim=-1)
    return f, labels, keys, F.one_hot(key_labels, classes).float()


@pytest.mark.parametrize('alpha,beta', [(1.0, 1.0), (0.3, 5.5), (4.0, 12)])
def test_cache_only_logits_follow_the_formula(alpha, beta):
    f, _, keys, values = cache_only_problem()
    head = CacheOnlyHead(num_classes=4, alpha=alpha, beta=beta)
    head.set_cache(keys, values)
    expected = alpha * torch.exp(
        -beta * (1 - f.double() @ keys.double().t())) @ values.double()
    torch.testing.assert_close(head((f, )).double(), expected, rtol=1e-5,
                               atol=1e-5)
    assert not hasattr(head, 'zero_shot_weights')


def test_cache_only_prediction_ignores_alpha_and_searches_beta_only():
    f, labels, keys, values = cache_only_problem(1)
    heads = []
    for alpha in (0.5, 7.0):
        head = CacheOnlyHead(num_classes=4, alpha=alpha, beta=3.0,
                             search_scale=9.0, search_step=25)
        head.set_cache(keys, values)
        heads.append(head)
    small, large = heads[0]((f, )), heads[1]((f, ))
    assert torch.equal(small.argmax(1), large.argmax(1))
    torch.testing.assert_close(large, small * 14.0)
    with pytest.raises(ValueError, match='alpha must be positive'):
        CacheOnlyHead(num_classes=4, alpha=0.0)
    with pytest.raises(ValueError, match='alpha must be positive'):
        CacheOnlyHead(num_classes=4, alpha=-1.0)

    head = heads[0]
    grid = head.search_grid()
    assert list(grid) == ['beta']
    assert grid['beta'].tolist() == pytest.approx(ref_grid(9.0, 25),
                                                  abs=1e-12)
    assert list(head.hyperparameters) == ['beta']
    with pytest.raises(KeyError):
        head.set_hyperparameters(alpha=2.0)


def test_cache_only_count_correct_equals_loop_over_betas():
    f, labels, keys, values = cache_only_problem(2)
    head = CacheOnlyHead(num_classes=4, alpha=2.0, search_scale=9.0,
                         search_step=25)
    head.set_cache(keys, values)
    expected = torch.tensor([
        int((ref_cache(f, keys, values, beta).argmax(1) == labels).sum())
        for beta in ref_grid(9.0, 25)
    ])
    counts = head.count_correct(f, labels)
    assert counts.shape == (25, ) and counts.dtype == torch.int64
    assert torch.equal(counts, expected)
    assert len(set(expected.tolist())) > 1  # beta matters on this data
    # Chunked over samples and over the grid: the same counts.
    result = grid_search(head, f, labels, chunk_size=7, max_elements=50)
    assert torch.equal(counts_of(result), expected)
    assert result.accuracy_grid.shape == (25, )
    best = int(torch.argmax(expected))  # first maximum
    assert result.best == {'beta': pytest.approx(ref_grid(9.0, 25)[best])}
    assert set(result.best) == {'beta'} and not result.stages
    assert head.alpha == 2.0


# -- 3. two-cache build_cache -----------------------------------------------
def test_dual_build_cache_averages_views_of_each_encoder():
    g = torch.Generator().manual_seed(3)
    views1 = 3 * torch.randn(4, 6, 10, generator=g)
    views2 = 5 * torch.randn(4, 6, 7, generator=g)
    labels = torch.tensor([0, 2, 1, 2, 0, 1])
    head = DualCacheTipAdapterHead(num_classes=3)
    assert not head.has_cache
    head.build_cache((views1, views2), labels)
    assert head.has_cache
    for keys, views in ((head.cache_keys, views1),
                        (head.second_cache_keys, views2)):
        mean = views.sum(0) / 4
        expected = mean / mean.norm(dim=1, keepdim=True)
        torch.testing.assert_close(keys, expected)
    one_hot = torch.zeros(6, 3)
    one_hot[torch.arange(6), labels] = 1
    assert torch.equal(head.cache_values, one_hot)
    assert head.second_cache_keys.shape == (6, 7)


def test_dual_head_rejects_one_feature_set():
    views = torch.randn(2, 3, 4)
    labels = torch.tensor([0, 1, 0])
    head = DualCacheTipAdapterHead(num_classes=2)
    for bad in (views, (views, ), (views, views, views)):
        with pytest.raises(ValueError, match='second_backbone'):
            head.build_cache(bad, labels)
    head.build_cache((views, views), labels)
    head.set_zero_shot_weights(torch.randn(4, 2))
    f = F.normalize(torch.randn(5, 4), dim=-1)
    with pytest.raises(ValueError, match='second_backbone'):
        head((f, ))
    with pytest.raises(ValueError, match=r'second_cache_keys \(3, C2\)'):
        head.set_second_cache_keys(torch.randn(4, 4))


# -- 4. staged and joint search ---------------------------------------------
SCALE, STEP = (7.0, 3.0), (10, 6)
SCALE2, STEP2 = (6.0, 6.0), (8, 5)


def staged_head(p, **kwargs):
    return dual_head(p, search_scale=SCALE, search_step=STEP,
                     second_search_scale=SCALE2, second_search_step=STEP2,
                     clip_logit_scale=10.0, **kwargs)


@pytest.mark.parametrize('helps', ['second', 'first'])
def test_staged_search_stages(helps, one_thread):
    p, labels = search_problem(helps)
    feats = (p['f'], p['f2'])
    head = staged_head(p, alpha=1.3, beta=2.2, alpha2=0.7, beta2=4.4)
    result = grid_search(head, feats, labels, chunk_size=50)
    assert len(result.stages) == 2
    first, second = result.stages

    # Stage 1 is Tip-Adapter's own search, exactly.
    tip = tip_head(p, search_scale=SCALE, search_step=STEP,
                   clip_logit_scale=10.0)
    tip_result = grid_search(tip, p['f'], labels, chunk_size=50)
    assert first.best == tip_result.best
    assert first.accuracy == tip_result.accuracy
    assert torch.equal(first.accuracy_grid, tip_result.accuracy_grid)
    assert list(first.grid) == ['beta', 'alpha']

    # Stage 2: a plain double loop with (beta, alpha) at stage 1's best.
    betas2 = ref_grid(SCALE2[0], STEP2[0])
    alphas2 = [0.0] + ref_grid(SCALE2[1], STEP2[1])
    assert list(second.grid) == ['beta2', 'alpha2']
    assert second.grid['beta2'].tolist() == pytest.approx(betas2, abs=1e-12)
    assert second.grid['alpha2'].tolist() == pytest.approx(alphas2,
                                                           abs=1e-12)
    alpha, beta = first.best['alpha'], first.best['beta']
    base = 10.0 * p['f'] @ p['weights'] + alpha * ref_cache(
        p['f'], p['keys'], p['values'], beta)
    expected = torch.zeros(len(betas2), len(alphas2), dtype=torch.int64)
    for i, beta2 in enumerate(betas2):
        cache2 = ref_cache(p['f2'], p['keys2'], p['values'], beta2)
        for j, alpha2 in enumerate(alphas2):
            logits = base + alpha2 * cache2
            expected[i, j] = int((logits.argmax(1) == labels).sum())
    assert torch.equal(counts_of(second), expected)
    flat = int(torch.argmax(expected.flatten()))
    assert second.best == {
        'beta2': pytest.approx(betas2[flat // len(alphas2)]),
        'alpha2': pytest.approx(alphas2[flat % len(alphas2)])}

    assert result.best == {**first.best, **second.best}
    assert result.accuracy == second.accuracy >= first.accuracy
    # alpha2 = 0 is Tip-Adapter: that column is stage 1's best accuracy.
    assert (second.accuracy_grid[:, 0] == first.accuracy).all()
    # The search leaves the head as it was; the caller applies `best`.
    assert head.hyperparameters == {'beta': 2.2, 'alpha': 1.3,
                                    'beta2': 4.4, 'alpha2': 0.7}
    assert not head.searched

    if helps == 'second':
        assert second.accuracy > first.accuracy + 20
        assert result.best['alpha2'] > 0
    else:
        assert first.accuracy == 100.0
        assert result.best['alpha2'] == 0.0
        assert result.best['beta2'] == pytest.approx(betas2[0])


def test_staged_search_restores_searched_head_even_on_error():
    p, labels = search_problem('second', seed=1, num=40)
    head = staged_head(p)
    head.set_hyperparameters(beta=1.5, alpha=0.5, beta2=2.5, alpha2=0.25)
    assert head.searched
    before = dict(head.hyperparameters)
    grid_search(head, (p['f'], p['f2']), labels)
    assert head.hyperparameters == before and head.searched

    def boom(*args, **kwargs):
        raise RuntimeError('boom')

    head.count_correct_second = boom
    with pytest.raises(RuntimeError, match='boom'):
        grid_search(head, (p['f'], p['f2']), labels)
    assert head.hyperparameters == before and head.searched


@pytest.mark.parametrize('helps,seed', [('second', 0), ('first', 2),
                                        ('second', 3)])
def test_joint_search_equals_four_nested_loops(helps, seed, one_thread):
    p, labels = search_problem(helps, seed=seed, num=80)
    feats = (p['f'], p['f2'])
    kwargs = dict(search_scale=(7.0, 3.0), search_step=(5, 4),
                  second_search_scale=(6.0, 2.5), second_search_step=(4, 3),
                  clip_logit_scale=10.0)
    joint = dual_head(p, search_mode='joint', **kwargs)
    result = grid_search(joint, feats, labels, chunk_size=30,
                         max_elements=500)
    assert not result.stages
    assert list(result.grid) == ['beta', 'alpha', 'beta2', 'alpha2']
    grids = [ref_grid(7.0, 5), ref_grid(3.0, 4), ref_grid(6.0, 4),
             [0.0] + ref_grid(2.5, 3)]
    expected = torch.zeros(5, 4, 4, 4, dtype=torch.int64)
    clip = 10.0 * p['f'] @ p['weights']
    for a, beta in enumerate(grids[0]):
        cache = ref_cache(p['f'], p['keys'], p['values'], beta)
        for b, alpha in enumerate(grids[1]):
            for c, beta2 in enumerate(grids[2]):
                cache2 = ref_cache(p['f2'], p['keys2'], p['values'], beta2)
                for d, alpha2 in enumerate(grids[3]):
                    logits = clip + alpha * cache + alpha2 * cache2
                    expected[a, b, c, d] = int(
                        (logits.argmax(1) == labels).sum())
    assert torch.equal(counts_of(result), expected)
    flat = int(torch.argmax(expected.flatten()))
    idx = np.unravel_index(flat, (5, 4, 4, 4))
    assert result.best == {
        name: pytest.approx(g[i])
        for name, g, i in zip(result.grid, grids, idx)}

    staged = grid_search(dual_head(p, **kwargs), feats, labels)
    assert result.accuracy >= staged.accuracy
    # The staged optimum is a point of the joint grid, with that accuracy.
    point = tuple(
        int(np.argmin([abs(v - staged.best[n]) for v in g]))
        for n, g in zip(result.grid, grids))
    assert result.accuracy_grid[point].item() == staged.accuracy


def test_search_mode_is_checked():
    with pytest.raises(ValueError, match='search_mode'):
        DualCacheTipAdapterHead(num_classes=3, search_mode='greedy')


# -- 5. Tip-Adapter-F with both key sets -----------------------------------
@pytest.mark.parametrize('fresh_trainable', [True, False])
def test_train_both_key_sets_and_round_trip(fresh_trainable):
    p = random_dual(num=12, seed=4)
    labels = torch.arange(12) % 5
    head = DualCacheTipAdapterHead(num_classes=5, train_cache_keys=True,
                                   alpha=1.5, beta=2.0, alpha2=0.8,
                                   beta2=3.0)
    head.set_zero_shot_weights(p['weights'])
    head.set_cache(p['keys'], p['values'])
    head.set_second_cache_keys(p['keys2'])
    assert isinstance(head.cache_keys, nn.Parameter)
    assert isinstance(head.second_cache_keys, nn.Parameter)
    assert {n for n, _ in head.named_parameters()} == {
        'cache_keys', 'second_cache_keys'}
    optimizer = torch.optim.SGD(head.parameters(), lr=1.0)
    keys, keys2 = head.cache_keys.detach().clone(), \
        head.second_cache_keys.detach().clone()
    values = head.cache_values.clone()
    weights = head.zero_shot_weights.clone()

    samples = [DataSample().set_gt_label(int(y)) for y in labels]
    loss = head.loss((p['f'], p['f2']), samples)['loss']
    logits = (100.0 * p['f'] @ p['weights'] +
              1.5 * ref_cache(p['f'], keys, values, 2.0) +
              0.8 * ref_cache(p['f2'], keys2, values, 3.0))
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert not torch.allclose(head.cache_keys, keys)
    assert not torch.allclose(head.second_cache_keys, keys2)
    assert torch.equal(head.cache_values, values)
    assert torch.equal(head.zero_shot_weights, weights)

    state = head.state_dict()
    fresh = DualCacheTipAdapterHead(num_classes=5,
                                    train_cache_keys=fresh_trainable)
    assert not fresh.has_cache
    fresh.load_state_dict(state)
    for name in ('cache_keys', 'second_cache_keys', 'cache_values',
                 'zero_shot_weights'):
        assert torch.equal(getattr(fresh, name), getattr(head, name)), name
    assert isinstance(fresh.second_cache_keys,
                      nn.Parameter) == fresh_trainable
    assert fresh.hyperparameters == head.hyperparameters
    with torch.no_grad():
        assert torch.equal(fresh((p['f'], p['f2'])),
                           head((p['f'], p['f2'])))


# -- 6. the classifier with a second backbone -------------------------------
RESNET = dict(type='ResNet', depth=18, base_channels=8, stem_channels=8)
GAP = dict(type='GlobalAveragePooling')


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


def test_classifier_encodes_with_both_frozen_encoders(tiny_clip):
    model = build_model(tiny_clip)
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
    model.init_weights()  # no Pretrained init_cfg: nothing to check


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
    model = build_model(tiny_clip)
    with pytest.raises(ValueError, match='2 visual encoder'):
        model.extract_feat(torch.randn(2, 32))


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
    assert set(out) == {'feats', 'second_feats', 'labels'}
    assert out['feats'].shape == (3, 32)
    assert out['second_feats'].shape == (3, 64)
    assert out['labels'].tolist() == [0, 1, 2]
    inputs = model.data_preprocessor(pseudo_collate(data))['inputs']
    f, f2 = model.encode_image(inputs)
    torch.testing.assert_close(out['feats'], f, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out['second_feats'], f2, rtol=1e-4,
                               atol=1e-5)


# -- 7. features of two encoders through the data path ----------------------
def two_encoder_batch(n=3):
    g = torch.Generator().manual_seed(6)
    return [dict(inputs=(torch.randn(4, generator=g, dtype=torch.float64),
                         torch.randn(6, generator=g, dtype=torch.float64)),
                 data_samples=DataSample().set_gt_label(i % 2))
            for i in range(n)]


def test_preprocessor_stacks_per_sample_tuples():
    pre = FeatureOrImageDataPreprocessor(mean=(1.0, 2.0, 3.0),
                                         std=(2.0, 2.0, 2.0), to_rgb=True)
    samples = two_encoder_batch()
    out = pre(pseudo_collate(samples))
    assert isinstance(out['inputs'], tuple) and len(out['inputs']) == 2
    first, second = out['inputs']
    assert first.shape == (3, 4) and second.shape == (3, 6)
    assert first.dtype == second.dtype == torch.float32
    assert torch.equal(first, torch.stack(
        [s['inputs'][0] for s in samples]).float())
    assert torch.equal(second, torch.stack(
        [s['inputs'][1] for s in samples]).float())
    assert len(out['data_samples']) == 3


def test_preprocessor_passes_default_collated_two_encoder_features():
    pre = FeatureOrImageDataPreprocessor(mean=(1.0, 2.0, 3.0),
                                         std=(2.0, 2.0, 2.0), to_rgb=True)
    samples = two_encoder_batch()
    first, second = pre(default_collate(samples))['inputs']
    assert first.shape == (3, 4) and second.shape == (3, 6)
    assert torch.equal(second, torch.stack(
        [s['inputs'][1] for s in samples]).float())


def test_cached_views_with_second_feats_feed_the_classifier(
        tiny_clip, tmp_path):
    g = torch.Generator().manual_seed(7)
    feats = 3 * torch.randn(10, 32, generator=g)
    second = 2 * torch.randn(10, 64, generator=g)
    labels = torch.arange(10) % 5 % 3
    path = tmp_path / 'views.pth'
    torch.save(dict(feats=feats, second_feats=second, labels=labels), path)
    data = CachedViewsDataset(str(path), num_views=2)
    assert len(data) == 10 and data.num_images == 5
    item = data[7]
    assert isinstance(item['inputs'], tuple) and len(item['inputs']) == 2
    assert torch.equal(item['inputs'][0], feats[7])
    assert torch.equal(item['inputs'][1], second[7])
    assert item['data_samples'].gt_label.item() == labels[7].item()

    model = build_model(tiny_clip)
    idx = [7, 2, 9, 0]
    batch = model.data_preprocessor(pseudo_collate([data[i] for i in idx]))
    n, n2 = model.extract_feat(batch['inputs'])
    torch.testing.assert_close(n, F.normalize(feats[idx], dim=-1))
    torch.testing.assert_close(n2, F.normalize(second[idx], dim=-1))

    # Tip-Adapter-F's fast path: the loss on cached features.
    head = model.head
    head.set_zero_shot_weights(F.normalize(torch.randn(32, 3, generator=g),
                                           dim=0))
    head.build_cache((feats.view(2, 5, 32), second.view(2, 5, 64)),
                     labels[:5])
    losses = model(batch['inputs'], batch['data_samples'], mode='loss')
    f_n = feats[idx] / feats[idx].norm(dim=1, keepdim=True)
    f2_n = second[idx] / second[idx].norm(dim=1, keepdim=True)
    keys = F.normalize(feats.view(2, 5, 32).mean(0), dim=-1)
    keys2 = F.normalize(second.view(2, 5, 64).mean(0), dim=-1)
    values = F.one_hot(labels[:5], 3).float()
    logits = (100.0 * f_n @ head.zero_shot_weights +
              ref_cache(f_n, keys, values, 1.0) +
              ref_cache(f2_n, keys2, values, 1.0))
    torch.testing.assert_close(losses['loss'],
                               F.cross_entropy(logits, labels[idx]))


# -- 8. search reports ------------------------------------------------------
def is_png(path):
    return path.read_bytes()[:4] == b'\x89PNG'


def test_report_of_a_staged_search(tmp_path):
    p, labels = search_problem('second', seed=1, num=40)
    result = grid_search(staged_head(p), (p['f'], p['f2']), labels)
    paths = save_search_report(result, str(tmp_path))
    names = sorted(path.rsplit('/', 1)[1] for path in paths)
    assert names == ['hyperparameter_search.json',
                     'hyperparameter_search_stage1.png',
                     'hyperparameter_search_stage2.png']
    assert is_png(tmp_path / 'hyperparameter_search_stage1.png')
    assert is_png(tmp_path / 'hyperparameter_search_stage2.png')
    assert not (tmp_path / 'hyperparameter_search.png').exists()
    report = json.loads((tmp_path / 'hyperparameter_search.json').read_text())
    assert len(report['stages']) == 2
    assert list(report['stages'][0]['grid']) == ['beta', 'alpha']
    assert list(report['stages'][1]['grid']) == ['beta2', 'alpha2']
    assert np.array(report['stages'][0]['accuracy_grid']).shape == STEP
    assert np.array(report['stages'][1]['accuracy_grid']).shape == (
        STEP2[0], STEP2[1] + 1)
    assert report['best'] == result.best
    assert set(report['best']) == {'beta', 'alpha', 'beta2', 'alpha2'}


def test_report_of_a_one_dimensional_search(tmp_path):
    f, labels, keys, values = cache_only_problem(3)
    head = CacheOnlyHead(num_classes=4, search_step=15)
    head.set_cache(keys, values)
    result = grid_search(head, f, labels)
    paths = save_search_report(result, str(tmp_path))
    assert [p.rsplit('.', 1)[1] for p in paths] == ['json', 'png']
    assert is_png(tmp_path / 'hyperparameter_search.png')
    report = json.loads((tmp_path / 'hyperparameter_search.json').read_text())
    assert list(report['grid']) == ['beta'] and 'stages' not in report
    assert len(report['accuracy_grid']) == 15


def test_report_of_a_joint_search_has_no_plot(tmp_path):
    p, labels = search_problem('second', seed=2, num=30)
    head = dual_head(p, search_mode='joint', search_step=(3, 2),
                     second_search_step=(2, 2))
    result = grid_search(head, (p['f'], p['f2']), labels)
    paths = save_search_report(result, str(tmp_path))
    assert [p.rsplit('/', 1)[1] for p in paths] == [
        'hyperparameter_search.json']


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
