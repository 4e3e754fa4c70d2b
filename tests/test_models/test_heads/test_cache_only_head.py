"""CacheOnlyHead: Tip-Adapter's cache term alone (any backbone, no text
tower), checked against formulas written out here in plain torch."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import random_problem

from tip_adapter_mm.engine import grid_search
from tip_adapter_mm.models import CacheOnlyHead


def ref_grid(scale, steps):
    """The reference search's linear grid."""
    return [i * (scale - 0.1) / steps + 0.1 for i in range(steps)]


def ref_cache(f, keys, values, beta):
    """``exp(-beta * (1 - f K^T)) @ L`` in plain torch."""
    return torch.exp(-beta * (1 - f @ keys.t())) @ values


def cache_only_problem(seed=0, num=60, c=16, classes=4, shots=3):
    """Normalised held-out features and labels, the raw views and labels
    of the few-shot set, and its cache computed here: the views averaged
    per image, then normalised (keys), and one-hot labels (values)."""
    p = random_problem(seed=seed, classes=classes, channels=c, shots=shots,
                       num_val=num, noise=1.2)
    keys = F.normalize(p['support'].mean(dim=0), dim=-1)
    values = F.one_hot(p['support_labels'], classes).float()
    return dict(f=F.normalize(p['val'], dim=-1), labels=p['val_labels'],
                views=p['support'], view_labels=p['support_labels'],
                keys=keys, values=values)


def fitted(p, **kwargs):
    head = CacheOnlyHead(num_classes=p['values'].shape[1], **kwargs)
    head.fit((p['views'], ), p['view_labels'])
    return head


def counts_of(result):
    """Correct predictions per grid point from the accuracy grid."""
    return (result.accuracy_grid * result.num_samples / 100).round().long()


@pytest.mark.parametrize('alpha,beta', [(1.0, 1.0), (0.3, 5.5), (4.0, 12)])
def test_cache_only_logits_follow_the_formula(alpha, beta):
    p = cache_only_problem()
    head = fitted(p, alpha=alpha, beta=beta)
    torch.testing.assert_close(head.cache.keys, p['keys'])
    assert torch.equal(head.cache.values, p['values'])
    expected = alpha * torch.exp(
        -beta * (1 - p['f'].double() @ p['keys'].double().t())
    ) @ p['values'].double()
    torch.testing.assert_close(head((p['f'], )).double(), expected,
                               rtol=1e-5, atol=1e-5)
    assert not hasattr(head, 'zero_shot_weights')


def test_cache_set_by_hand_follows_the_formula():
    p = cache_only_problem(4)
    g = torch.Generator().manual_seed(4)
    keys = F.normalize(torch.randn(12, 16, generator=g), dim=-1)
    head = CacheOnlyHead(num_classes=4, alpha=2.0, beta=3.0)
    head.cache.set(keys, p['values'])
    torch.testing.assert_close(head((p['f'], )),
                               2.0 * ref_cache(p['f'], keys, p['values'], 3.0))


def test_cache_only_prediction_ignores_alpha_and_searches_beta_only():
    p = cache_only_problem(1)
    heads = [fitted(p, alpha=alpha, beta=3.0, search_scale=9.0,
                    search_step=25) for alpha in (0.5, 7.0)]
    small, large = heads[0]((p['f'], )), heads[1]((p['f'], ))
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
    assert head.fixed_hyperparameters() == {'beta': 3.0}
    with pytest.raises(KeyError):
        head.set_hyperparameters(alpha=2.0)
    # alpha is a plain buffer (saved), not a hyperparameter.
    assert float(head.alpha) == 0.5 and 'alpha' in head.state_dict()


def test_cache_only_count_correct_equals_loop_over_betas():
    p = cache_only_problem(2)
    f, labels = p['f'], p['labels']
    head = fitted(p, alpha=2.0, search_scale=9.0, search_step=25)
    expected = torch.tensor([
        int((ref_cache(f, p['keys'], p['values'], beta).argmax(1) ==
             labels).sum()) for beta in ref_grid(9.0, 25)
    ])
    counts = head.count_correct((f, ), labels, {})
    assert counts.shape == (25, ) and counts.dtype == torch.int64
    assert torch.equal(counts, expected)
    assert len(set(expected.tolist())) > 1  # beta matters on this data
    # Chunked over samples and over the grid: the same counts.
    result = grid_search(head, (f, ), labels, chunk_size=7, max_elements=50)
    assert torch.equal(counts_of(result), expected)
    assert result.accuracy_grid.shape == (25, )
    best = int(torch.argmax(expected))  # first maximum
    assert result.best == {'beta': pytest.approx(ref_grid(9.0, 25)[best])}
    assert set(result.best) == {'beta'} and not result.stages
    assert head.alpha == 2.0
    # The search does not apply its result.
    assert head.hyperparameters == {'beta': 1.0} and not head.searched
    head.apply_search(result.best)
    assert head.searched and head.hyperparameters == result.best


def test_features_contract():
    p = cache_only_problem(3)
    head = fitted(p)
    with pytest.raises(TypeError,
                       match=r'CacheOnlyHead.*bare tensor.*\(feats, \)'):
        head(p['f'])
    with pytest.raises(TypeError, match=r'CacheOnlyHead\.fit.*bare tensor'):
        head.fit(p['views'], p['view_labels'])
    with pytest.raises(ValueError, match='1 visual encoder'):
        head((p['f'], p['f']))
    with pytest.raises(RuntimeError, match='BuildCacheHook'):
        CacheOnlyHead(num_classes=4)((p['f'], ))


@pytest.mark.parametrize('train_cache_keys', [False, True])
def test_state_dict_round_trip_and_old_checkpoints(train_cache_keys):
    p = cache_only_problem(5)
    head = fitted(p, alpha=3.0, train_cache_keys=train_cache_keys)
    assert isinstance(head.cache.keys, nn.Parameter) == train_cache_keys
    head.apply_search({'beta': 4.5})
    fresh = CacheOnlyHead(num_classes=4, train_cache_keys=train_cache_keys)
    assert not fresh.is_fitted
    fresh.load_state_dict(head.state_dict())
    assert fresh.is_fitted and fresh.searched
    assert fresh.hyperparameters == {'beta': 4.5} and float(fresh.alpha) == 3
    assert torch.equal(fresh((p['f'], )), head((p['f'], )))

    # The version before the cache component: keys, values and beta at the
    # head's top level.
    new = head.state_dict()
    old = {'cache_keys': new['cache.keys'], 'cache_values':
           new['cache.values'], 'beta': new['cache.beta'],
           'alpha': new['alpha'], 'is_searched': new['is_searched']}
    assert set(new) == {'cache.keys', 'cache.values', 'cache.beta', 'alpha',
                        'is_searched', 'class_names_digest'}
    older = CacheOnlyHead(num_classes=4, train_cache_keys=train_cache_keys)
    older.load_state_dict(old, strict=True)
    assert older.searched and older.hyperparameters == {'beta': 4.5}
    assert torch.equal(older((p['f'], )), head((p['f'], )))
