"""DualCacheTipAdapterHead: Tip-Adapter plus a second cache on another
encoder's features; its logits, fitting, staged and joint search and
Tip-Adapter-F on both key sets, checked against formulas written out here
in plain torch."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmpretrain.structures import DataSample

from tip_adapter_mm.engine import grid_search
from tip_adapter_mm.models import DualCacheTipAdapterHead, TipAdapterHead


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
    head.cache.set(p['keys'], p['values'])
    # Both caches hold the same images: the same values.
    head.second_cache.set(p['keys2'], head.cache.values)
    return head


def tip_head(p, **kwargs):
    head = TipAdapterHead(num_classes=p['values'].shape[1], **kwargs)
    head.set_zero_shot_weights(p['weights'])
    head.cache.set(p['keys'], p['values'])
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


# -- 2. fitting both caches -------------------------------------------------
def test_dual_fit_averages_views_of_each_encoder():
    g = torch.Generator().manual_seed(3)
    views1 = 3 * torch.randn(4, 6, 10, generator=g)
    views2 = 5 * torch.randn(4, 6, 7, generator=g)
    labels = torch.tensor([0, 2, 1, 2, 0, 1])
    head = DualCacheTipAdapterHead(num_classes=3)
    assert not head.is_fitted
    head.fit((views1, views2), labels)
    assert head.is_fitted
    for keys, views in ((head.cache.keys, views1),
                        (head.second_cache.keys, views2)):
        mean = views.sum(0) / 4
        expected = mean / mean.norm(dim=1, keepdim=True)
        torch.testing.assert_close(keys, expected)
    one_hot = torch.zeros(6, 3)
    one_hot[torch.arange(6), labels] = 1
    assert torch.equal(head.cache.values, one_hot)
    assert torch.equal(head.second_cache.values, one_hot)
    assert head.second_cache.keys.shape == (6, 7)


def test_dual_head_rejects_one_feature_set():
    views = torch.randn(2, 3, 4)
    labels = torch.tensor([0, 1, 0])
    head = DualCacheTipAdapterHead(num_classes=2)
    assert head.num_feature_sets == 2
    with pytest.raises(TypeError, match=r'DualCacheTipAdapterHead\.fit.*'
                       'bare tensor'):
        head.fit(views, labels)
    for bad in ((views, ), (views, views, views)):
        with pytest.raises(ValueError, match='2 visual encoder'):
            head.fit(bad, labels)
    with pytest.raises(ValueError, match=r'labels \(2,\) do not match'):
        head.fit((views, views), labels[:2])
    head.fit((views, views), labels)
    head.set_zero_shot_weights(torch.randn(4, 2))
    f = F.normalize(torch.randn(5, 4), dim=-1)
    with pytest.raises(ValueError, match='2 visual encoder'):
        head((f, ))
    with pytest.raises(TypeError, match='bare tensor'):
        head(f)
    # Keys for another number of images than the values.
    with pytest.raises(ValueError, match=r'values \(NK, 2\)'):
        head.second_cache.set(torch.randn(4, 4), head.cache.values)


# -- 3. staged and joint search ---------------------------------------------
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
    tip_result = grid_search(tip, (p['f'], ), labels, chunk_size=50)
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


# -- 4. Tip-Adapter-F with both key sets -----------------------------------
@pytest.mark.parametrize('fresh_trainable', [True, False])
def test_train_both_key_sets_and_round_trip(fresh_trainable):
    p = random_dual(num=12, seed=4)
    labels = torch.arange(12) % 5
    head = dual_head(p, train_cache_keys=True, alpha=1.5, beta=2.0,
                     alpha2=0.8, beta2=3.0)
    assert isinstance(head.cache.keys, nn.Parameter)
    assert isinstance(head.second_cache.keys, nn.Parameter)
    assert {n for n, _ in head.named_parameters()} == {
        'cache.keys', 'second_cache.keys'}
    optimizer = torch.optim.SGD(head.parameters(), lr=1.0)
    keys, keys2 = head.cache.keys.detach().clone(), \
        head.second_cache.keys.detach().clone()
    values = head.cache.values.clone()
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
    assert not torch.allclose(head.cache.keys, keys)
    assert not torch.allclose(head.second_cache.keys, keys2)
    assert torch.equal(head.cache.values, values)
    assert torch.equal(head.second_cache.values, values)
    assert torch.equal(head.zero_shot_weights, weights)

    state = head.state_dict()
    fresh = DualCacheTipAdapterHead(num_classes=5,
                                    train_cache_keys=fresh_trainable)
    assert not fresh.is_fitted
    fresh.load_state_dict(state)
    assert fresh.is_fitted
    fresh_state = fresh.state_dict()
    for name in ('cache.keys', 'second_cache.keys', 'cache.values',
                 'second_cache.values', 'zero_shot_weights'):
        assert torch.equal(fresh_state[name], state[name]), name
    assert isinstance(fresh.second_cache.keys,
                      nn.Parameter) == fresh_trainable
    assert fresh.hyperparameters == head.hyperparameters
    with torch.no_grad():
        assert torch.equal(fresh((p['f'], p['f2'])),
                           head((p['f'], p['f2'])))


def test_old_style_state_dict_loads():
    """A checkpoint of the version before the cache components: one
    ``cache_values`` for both caches, ``second_cache_keys``, ``beta`` and
    ``beta2`` at the head's top level."""
    p = random_dual(seed=5)
    head = dual_head(p, alpha=1.5, beta=2.0, alpha2=0.8, beta2=3.0)
    head.apply_search(dict(beta=2.5, alpha=0.5, beta2=1.5, alpha2=2.0))
    new = head.state_dict()
    old = {
        'cache_keys': new['cache.keys'].clone(),
        'second_cache_keys': new['second_cache.keys'].clone(),
        'cache_values': new['cache.values'].clone(),
        'is_searched': torch.tensor(True),
        'clip_logit_scale': torch.tensor(100.0, dtype=torch.float64),
        'zero_shot_weights': new['zero_shot_weights'].clone(),
        'alpha': torch.tensor(0.5, dtype=torch.float64),
        'beta': torch.tensor(2.5, dtype=torch.float64),
        'alpha2': torch.tensor(2.0, dtype=torch.float64),
        'beta2': torch.tensor(1.5, dtype=torch.float64),
    }
    fresh = DualCacheTipAdapterHead(num_classes=5)
    fresh.load_state_dict(old, strict=True)
    assert fresh.searched and fresh.hyperparameters == head.hyperparameters
    assert torch.equal(fresh.second_cache.values, head.cache.values)
    assert torch.equal(fresh((p['f'], p['f2'])), head((p['f'], p['f2'])))
