"""TipAdapterHead against the SPEC formula, written out independently."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tip_adapter_mm.models import TipAdapterHead


def random_problem(num=7, channels=16, classes=5, shots=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = F.normalize(torch.randn(num, channels, generator=g), dim=-1)
    keys = F.normalize(torch.randn(classes * shots, channels, generator=g),
                       dim=-1)
    labels = torch.arange(classes).repeat_interleave(shots)
    values = F.one_hot(labels, classes).float()
    weights = F.normalize(torch.randn(channels, classes, generator=g), dim=0)
    return feats, keys, values, weights


def build_head(keys, values, weights, **kwargs):
    head = TipAdapterHead(num_classes=values.shape[1], **kwargs)
    head.set_zero_shot_weights(weights)
    head.set_cache(keys, values)
    return head


def spec_logits(f, W, F_keys, L, alpha, beta, scale=100.0):
    """SPEC section 1, in NumPy float64."""
    f, W, F_keys, L = (t.double().numpy() for t in (f, W, F_keys, L))
    clip_logits = scale * f @ W
    affinity = f @ F_keys.T
    cache_logits = np.exp(-beta * (1 - affinity)) @ L
    return clip_logits + alpha * cache_logits


@pytest.mark.parametrize('alpha,beta', [(1.17, 1.0), (3.0, 5.5), (0.1, 13)])
def test_logits_follow_spec_formula(alpha, beta):
    feats, keys, values, weights = random_problem()
    head = build_head(keys, values, weights, alpha=alpha, beta=beta)
    logits = head((feats, ))
    expected = spec_logits(feats, weights, keys, values, alpha, beta)
    assert logits.shape == (7, 5)
    np.testing.assert_allclose(logits.double().numpy(), expected, rtol=1e-6,
                               atol=1e-6 * np.abs(expected).max())


def test_alpha_zero_is_exactly_zero_shot_clip():
    feats, keys, values, weights = random_problem()
    head = build_head(keys, values, weights, alpha=0.0, beta=7.0)
    zero_shot = 100.0 * feats @ weights
    assert torch.equal(head((feats, )), zero_shot)


def test_clip_logit_scale_is_configurable():
    feats, keys, values, weights = random_problem()
    head = build_head(keys, values, weights, alpha=2.0, beta=3.0,
                      clip_logit_scale=14.3)
    expected = spec_logits(feats, weights, keys, values, 2.0, 3.0, 14.3)
    np.testing.assert_allclose(head((feats, )).double().numpy(), expected,
                               rtol=1e-5, atol=1e-5)


def test_predict_and_loss_follow_mmpretrain_head_api():
    from mmpretrain.structures import DataSample
    feats, keys, values, weights = random_problem()
    head = build_head(keys, values, weights, alpha=1.0, beta=1.0)
    samples = [DataSample().set_gt_label(i % 5) for i in range(7)]
    preds = head.predict((feats, ), samples)
    logits = head((feats, ))
    assert [int(p.pred_label) for p in preds] == logits.argmax(1).tolist()
    torch.testing.assert_close(torch.stack([p.pred_score for p in preds]),
                               logits.softmax(1))
    loss = head.loss((feats, ), samples)['loss']
    expected = F.cross_entropy(logits, torch.arange(7) % 5)
    torch.testing.assert_close(loss, expected)


def test_state_dict_round_trip_restores_cache_and_hyperparameters():
    feats, keys, values, weights = random_problem()
    head = build_head(keys, values, weights, alpha=1.0, beta=1.0)
    head.set_hyperparameters(alpha=2.5, beta=4.25)
    fresh = TipAdapterHead(num_classes=5)
    assert not fresh.has_cache and not fresh.searched
    fresh.load_state_dict(head.state_dict())
    assert fresh.searched and fresh.hyperparameters == {'beta': 4.25,
                                                        'alpha': 2.5}
    assert torch.equal(fresh((feats, )), head((feats, )))


def test_shape_errors_name_the_expected_shapes():
    head = TipAdapterHead(num_classes=5)
    with pytest.raises(ValueError, match=r'zero_shot_weights \(C, 5\)'):
        head.set_zero_shot_weights(torch.zeros(16, 4))
    with pytest.raises(ValueError, match=r'cache_values \(NK, 5\)'):
        head.set_cache(torch.zeros(6, 16), torch.zeros(6, 4))
    with pytest.raises(RuntimeError, match='BuildCacheHook'):
        head.affinity(torch.zeros(1, 16))
    with pytest.raises(KeyError, match='gamma'):
        head.set_hyperparameters(gamma=1.0)


def test_search_grid_follows_reference_formula():
    head = TipAdapterHead(num_classes=2, search_scale=(7, 3),
                          search_step=(200, 20))
    grid = head.search_grid()
    assert list(grid) == ['beta', 'alpha']
    assert len(grid['beta']) == 200 and len(grid['alpha']) == 20
    assert grid['beta'][0] == 0.1 and grid['alpha'][0] == 0.1
    assert grid['beta'][5].item() == pytest.approx(5 * 6.9 / 200 + 0.1)
    assert grid['alpha'][19].item() == pytest.approx(19 * 2.9 / 20 + 0.1)
