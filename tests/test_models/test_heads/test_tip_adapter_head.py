"""TipAdapterHead against the SPEC formula, written out independently."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import random_problem

from tip_adapter_mm.models import TipAdapterHead

CLASSES, CHANNELS, SHOTS, NUM = 5, 16, 3, 7


def problem(seed=0):
    """Raw views ``(V, S, C)`` and labels, normalised test features ``(7,
    C)`` and text weights ``(C, 5)``."""
    p = random_problem(seed=seed, classes=CLASSES, channels=CHANNELS,
                       shots=SHOTS, num_test=NUM)
    feats = F.normalize(p['test'], dim=-1)
    # Contiguous, as the head stores them: the same matmul, bit for bit.
    weights = p['zero_shot_weights'].contiguous()
    return p['support'], p['support_labels'], feats, weights


def build_head(views, labels, weights, **kwargs):
    head = TipAdapterHead(num_classes=weights.shape[1], **kwargs)
    head.set_zero_shot_weights(weights)
    head.fit((views, ), labels)
    return head


def np_cache(views, labels, classes=CLASSES):
    """Tip-Adapter's cache in NumPy float64: the views averaged per image,
    then L2-normalised, are the keys; one-hot labels the values."""
    mean = views.double().numpy().mean(axis=0)
    keys = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    values = np.eye(classes)[labels.numpy()]
    return keys, values


def spec_logits(f, W, F_keys, L, alpha, beta, scale=100.0):
    """SPEC section 1, in NumPy float64."""
    f, W = (t.double().numpy() for t in (f, W))
    clip_logits = scale * f @ W
    affinity = f @ F_keys.T
    cache_logits = np.exp(-beta * (1 - affinity)) @ L
    return clip_logits + alpha * cache_logits


@pytest.mark.parametrize('alpha,beta', [(1.17, 1.0), (3.0, 5.5), (0.1, 13)])
def test_logits_follow_spec_formula(alpha, beta):
    views, labels, feats, weights = problem()
    head = build_head(views, labels, weights, alpha=alpha, beta=beta)
    keys, values = np_cache(views, labels)
    np.testing.assert_allclose(head.cache.keys.double().numpy(), keys,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(head.cache.values.numpy(), values)
    logits = head((feats, ))
    expected = spec_logits(feats, weights, keys, values, alpha, beta)
    assert logits.shape == (NUM, CLASSES)
    np.testing.assert_allclose(logits.double().numpy(), expected, rtol=1e-6,
                               atol=1e-6 * np.abs(expected).max())


def test_cache_set_by_hand_follows_spec_formula():
    """Keys that are not averaged views (Tip-Adapter-F's trained ones)."""
    g = torch.Generator().manual_seed(1)
    _, labels, feats, weights = problem(1)
    keys = F.normalize(torch.randn(len(labels), CHANNELS, generator=g),
                       dim=-1)
    values = F.one_hot(labels, CLASSES).float()
    head = TipAdapterHead(num_classes=CLASSES, alpha=2.0, beta=3.0)
    head.set_zero_shot_weights(weights)
    head.cache.set(keys, values)
    expected = spec_logits(feats, weights, keys.double().numpy(),
                           values.double().numpy(), 2.0, 3.0)
    np.testing.assert_allclose(head((feats, )).double().numpy(), expected,
                               rtol=1e-6, atol=1e-6 * np.abs(expected).max())


def test_alpha_zero_is_exactly_zero_shot_clip():
    views, labels, feats, weights = problem()
    head = build_head(views, labels, weights, alpha=0.0, beta=7.0)
    zero_shot = 100.0 * feats @ weights
    assert torch.equal(head((feats, )), zero_shot)


def test_clip_logit_scale_is_configurable():
    views, labels, feats, weights = problem()
    head = build_head(views, labels, weights, alpha=2.0, beta=3.0,
                      clip_logit_scale=14.3)
    keys, values = np_cache(views, labels)
    expected = spec_logits(feats, weights, keys, values, 2.0, 3.0, 14.3)
    np.testing.assert_allclose(head((feats, )).double().numpy(), expected,
                               rtol=1e-5, atol=1e-5)


def test_predict_and_loss_follow_mmpretrain_head_api():
    from mmpretrain.structures import DataSample
    views, labels, feats, weights = problem()
    head = build_head(views, labels, weights, alpha=1.0, beta=1.0)
    samples = [DataSample().set_gt_label(i % 5) for i in range(NUM)]
    preds = head.predict((feats, ), samples)
    logits = head((feats, ))
    assert [int(p.pred_label) for p in preds] == logits.argmax(1).tolist()
    scores = torch.stack([p.pred_score for p in preds])
    assert scores.dtype == torch.float64  # the softmax in float64
    torch.testing.assert_close(scores, logits.double().softmax(1))
    loss = head.loss((feats, ), samples)['loss']
    expected = F.cross_entropy(logits, torch.arange(NUM) % 5)
    torch.testing.assert_close(loss, expected)


def test_bare_tensor_is_a_type_error_naming_the_head():
    views, labels, feats, weights = problem()
    head = build_head(views, labels, weights)
    from mmpretrain.structures import DataSample
    samples = [DataSample().set_gt_label(0) for _ in range(NUM)]
    message = r'TipAdapterHead.*bare tensor.*pass \(feats, \)'
    with pytest.raises(TypeError, match=message):
        head(feats)
    with pytest.raises(TypeError, match=message):
        head.predict(feats, samples)
    with pytest.raises(TypeError, match=message):
        head.loss(feats, samples)
    with pytest.raises(TypeError, match=r'TipAdapterHead\.fit.*bare tensor'):
        head.fit(views, labels)
    # The tuple is accepted, and a list of one tensor too.
    assert torch.equal(head([feats]), head((feats, )))


def test_searched_flag_follows_how_hyperparameters_were_set():
    head = TipAdapterHead(num_classes=CLASSES, alpha=1.17, beta=2.5)
    assert not head.searched
    head.set_hyperparameters(alpha=3.0)
    assert not head.searched
    assert head.hyperparameters == {'alpha': 3.0, 'beta': 2.5}
    head.apply_search({'beta': 4.0, 'alpha': 0.5})
    assert head.searched
    assert head.hyperparameters == {'alpha': 0.5, 'beta': 4.0}
    # Changed by hand after a search: no longer the searched values.
    head.set_hyperparameters(beta=1.0)
    assert not head.searched
    # Reads: alpha is a buffer of the head, beta the cache's.
    assert head.alpha.dtype == torch.float64 and float(head.alpha) == 0.5
    assert head.cache.beta.dtype == torch.float64
    assert float(head.cache.beta) == 1.0
    assert head.hyperparameter('beta') is head.cache.beta


def test_fixed_hyperparameters_are_the_constructor_values():
    head = TipAdapterHead(num_classes=CLASSES, alpha=1.17, beta=2.5)
    fixed = {'alpha': 1.17, 'beta': 2.5}
    assert head.fixed_hyperparameters() == fixed
    head.set_hyperparameters(alpha=3.0, beta=0.5)
    assert head.fixed_hyperparameters() == fixed
    head.apply_search({'alpha': 0.1, 'beta': 6.9})
    assert head.fixed_hyperparameters() == fixed
    assert head.hyperparameters == {'alpha': 0.1, 'beta': 6.9}
    # A copy: changing it does not change the head's.
    head.fixed_hyperparameters()['alpha'] = 99.0
    assert head.fixed_hyperparameters() == fixed


@pytest.mark.parametrize('searched', [True, False])
def test_state_dict_round_trip_restores_cache_and_hyperparameters(searched):
    views, labels, feats, weights = problem()
    head = build_head(views, labels, weights, alpha=1.0, beta=1.0)
    if searched:
        head.apply_search(dict(alpha=2.5, beta=4.25))
    else:
        head.set_hyperparameters(alpha=2.5, beta=4.25)
    fresh = TipAdapterHead(num_classes=5)
    assert not fresh.is_fitted and not fresh.searched
    fresh.load_state_dict(head.state_dict())
    assert fresh.is_fitted and fresh.searched == searched
    assert fresh.hyperparameters == {'beta': 4.25, 'alpha': 2.5}
    assert torch.equal(fresh((feats, )), head((feats, )))


@pytest.mark.parametrize('train_cache_keys', [False, True])
def test_old_style_state_dict_loads(train_cache_keys):
    """A checkpoint of the version before the KeyValueCache component:
    ``cache_keys``, ``cache_values`` and ``beta`` at the head's top level."""
    views, labels, feats, weights = problem(2)
    head = build_head(views, labels, weights, alpha=1.0, beta=1.0,
                      clip_logit_scale=50.0,
                      train_cache_keys=train_cache_keys)
    head.apply_search(dict(alpha=2.5, beta=4.25))
    new = head.state_dict()
    old = {
        'cache_keys': new['cache.keys'].clone(),
        'cache_values': new['cache.values'].clone(),
        'beta': torch.tensor(4.25, dtype=torch.float64),
        'alpha': torch.tensor(2.5, dtype=torch.float64),
        'zero_shot_weights': new['zero_shot_weights'].clone(),
        'clip_logit_scale': torch.tensor(50.0, dtype=torch.float64),
        'is_searched': torch.tensor(True),
    }
    fresh = TipAdapterHead(num_classes=CLASSES,
                           train_cache_keys=train_cache_keys)
    result = fresh.load_state_dict(old, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert fresh.searched and fresh.is_fitted
    assert fresh.hyperparameters == {'alpha': 2.5, 'beta': 4.25}
    assert float(fresh.clip_logit_scale) == 50.0
    assert isinstance(fresh.cache.keys, nn.Parameter) == train_cache_keys
    assert torch.equal(fresh.cache.keys, head.cache.keys)
    assert torch.equal(fresh.cache.values, head.cache.values)
    with torch.no_grad():
        assert torch.equal(fresh((feats, )), head((feats, )))
    # ... and the loaded head saves in the new layout.
    assert set(fresh.state_dict()) == set(new)


def test_shape_errors_name_the_expected_shapes():
    head = TipAdapterHead(num_classes=5)
    with pytest.raises(ValueError, match=r'zero_shot_weights \(C, 5\)'):
        head.set_zero_shot_weights(torch.zeros(16, 4))
    with pytest.raises(ValueError, match=r'values \(NK, 5\)'):
        head.cache.set(torch.zeros(6, 16), torch.zeros(6, 4))
    with pytest.raises(RuntimeError, match='BuildCacheHook'):
        head.cache.affinity(torch.zeros(1, 16))
    with pytest.raises(KeyError, match='gamma'):
        head.set_hyperparameters(gamma=1.0)
    with pytest.raises(ValueError, match=r'labels must be in \[0, 5\)'):
        head.fit((torch.zeros(2, 3, 16), ), torch.tensor([0, 1, 5]))


def test_search_grid_follows_reference_formula():
    head = TipAdapterHead(num_classes=2, search_scale=(7, 3),
                          search_step=(200, 20))
    grid = head.search_grid()
    assert list(grid) == ['beta', 'alpha']
    assert len(grid['beta']) == 200 and len(grid['alpha']) == 20
    assert grid['beta'][0] == 0.1 and grid['alpha'][0] == 0.1
    assert grid['beta'][5].item() == pytest.approx(5 * 6.9 / 200 + 0.1)
    assert grid['alpha'][19].item() == pytest.approx(19 * 2.9 / 20 + 0.1)
