"""APEHead against APE's formulas (yangyangyang127/APE, main.py APE() and
utils.py cal_criterion), written out independently in NumPy."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CONFIGS, random_problem
from mmengine.config import Config
from torch.utils._python_dispatch import TorchDispatchMode

from tip_adapter_mm.engine import grid_search, save_search_report
from tip_adapter_mm.models import APEHead, TipAdapterHead
from mmpretrain.registry import MODELS


# -- NumPy reference ---------------------------------------------------------
def np_normalize(x, axis):
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


def np_class_features(W, keys, labels):
    """Per class: its text weight, then its keys (``1 + K_c`` rows)."""
    return [
        np.concatenate([W[:, c][None], keys[labels == c]])
        for c in range(W.shape[1])
    ]


def np_similarity_loops(W, keys, labels):
    """cal_criterion's 4 nested loops, literally (any shots per class)."""
    feats = np_class_features(W, keys, labels)
    sim_sum, count = np.zeros(W.shape[0]), 0
    for i in range(len(feats)):
        for j in range(len(feats)):
            for m in range(len(feats[i])):
                for n in range(len(feats[j])):
                    if i != j:
                        sim_sum += feats[i][m] * feats[j][n]
                        count += 1
    return sim_sum / count


def np_similarity_pairs(W, keys, labels):
    """The same mean over all feature pairs of different classes, with an
    explicit pair mask (for problems too big for the loops)."""
    feats = np_class_features(W, keys, labels)
    ids = np.concatenate([np.full(len(f), c) for c, f in enumerate(feats)])
    rows = np.concatenate(feats)
    mask = (ids[:, None] != ids[None, :]).astype(np.float64)
    return np.einsum('tu,tc,uc->c', mask, rows, rows) / mask.sum()


def np_indices(W, keys, labels, feat_num, w=(0.7, 0.3), loops=False):
    sim = (np_similarity_loops if loops else np_similarity_pairs)(W, keys,
                                                                  labels)
    criterion = -w[0] * sim + w[1] * np.var(W, axis=1, ddof=1)
    return np.argsort(-criterion, kind='stable')[:feat_num]


def np_value_weights(W, keys, values, idx, gamma):
    W1 = np_normalize(W[idx], axis=0)
    keys1 = np_normalize(keys[:, idx], axis=1)
    z = keys1 @ W1
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    div = np.sum(
        values * np.log2((values + 1e-6) / (p + 1e-6)), axis=1, keepdims=True)
    return np.exp(gamma * div)


def np_ape_logits(f, W, keys, values, idx, alpha, beta, gamma, scale=100.):
    soft_values = values * np_value_weights(W, keys, values, idx, gamma)
    f1 = np_normalize(f[:, idx], axis=1)
    keys1 = np_normalize(keys[:, idx], axis=1)
    cache = np.exp(-beta * (1 - f1 @ keys1.T)) @ soft_values
    return scale * f @ W + alpha * cache


# -- problems ----------------------------------------------------------------
def ape_problem(num=9,
                channels=32,
                classes=5,
                shots=3,
                views=4,
                seed=0,
                labels=None):
    """Raw views ``(V, S, C)`` (non-zero mean, as CLIP's, and channels of
    different scales, which the channel criterion sees), their labels (any
    order, any shots per class), text weights ``(C, N)`` and test features
    ``(M, C)``. (conftest's ``random_problem`` has neither.)"""
    g = torch.Generator().manual_seed(seed)
    offset = torch.randn(channels, generator=g)
    if labels is None:
        labels = torch.arange(classes).repeat_interleave(shots)
    view_feats = offset + torch.randn(
        views, len(labels), channels, generator=g) * torch.rand(
            channels, generator=g)
    weights = F.normalize(
        offset[:, None] + torch.randn(channels, classes, generator=g), dim=0)
    feats = F.normalize(
        offset + torch.randn(num, channels, generator=g), dim=-1)
    return view_feats, labels, weights, feats


def build_head(view_feats, labels, weights, **kwargs):
    head = APEHead(num_classes=weights.shape[1], **kwargs)
    head.set_zero_shot_weights(weights)
    head.fit((view_feats, ), labels)
    return head


def as_np(*tensors):
    return [t.double().numpy() for t in tensors]


def np_keys(view_feats):
    return np_normalize(view_feats.double().numpy().mean(axis=0), axis=1)


# -- tests -------------------------------------------------------------------
@pytest.mark.parametrize(
    'labels',
    [
        torch.tensor([0, 0, 1, 1, 2, 2]),  # 3 classes x 2 shots
        torch.tensor([2, 0, 2, 1, 2, 0, 1]),  # unequal, unsorted
    ])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_channel_selection_equals_naive_loops(labels, seed):
    view_feats, labels, weights, _ = ape_problem(
        channels=6, classes=3, seed=seed, labels=labels)
    head = build_head(view_feats, labels, weights, feat_num=6)
    W, = as_np(weights)
    expected = np_indices(
        W, np_keys(view_feats), labels.numpy(), 6, loops=True)
    assert head.cache.feat_indices.dtype == torch.long
    # The whole ranking.
    assert head.cache.feat_indices.tolist() == expected.tolist()
    head3 = build_head(view_feats, labels, weights, feat_num=3)
    assert head3.cache.feat_indices.tolist() == expected[:3].tolist()
    # The pair-mask form used below agrees with the loops.
    np.testing.assert_allclose(
        np_similarity_pairs(W, np_keys(view_feats), labels.numpy()),
        np_similarity_loops(W, np_keys(view_feats), labels.numpy()),
        rtol=1e-12)


@pytest.mark.parametrize('weights_w', [(0.7, 0.3), (0.2, 0.8)])
def test_channels_and_value_weights_equal_numpy(weights_w):
    view_feats, labels, weights, _ = ape_problem(
        channels=64, classes=7, shots=4, seed=3)
    head = build_head(
        view_feats,
        labels,
        weights,
        feat_num=20,
        gamma=0.3,
        criterion_weights=weights_w)
    W, values = as_np(weights, head.cache.values)
    keys = np_keys(view_feats)
    np.testing.assert_allclose(
        head.cache.keys.double().numpy(), keys, rtol=1e-5, atol=1e-6)
    idx = np_indices(W, keys, labels.numpy(), 20, weights_w)
    assert head.cache.feat_indices.tolist() == idx.tolist()
    for gamma in (0.3, 0.0, 0.45):
        expected = np_value_weights(W, keys, values, idx, gamma)
        # value_weights(gamma) is gone: it is exp(gamma * cache_div).
        np.testing.assert_allclose(
            torch.exp(gamma * head.cache_div).double().numpy(),
            expected,
            rtol=1e-5)
        np.testing.assert_allclose(
            head.soft_values(gamma).double().numpy(),
            values * expected,
            rtol=1e-5)
    # By default, at the head's gamma.
    np.testing.assert_allclose(
        head.soft_values().double().numpy(),
        values * np_value_weights(W, keys, values, idx, 0.3),
        rtol=1e-5)


@pytest.mark.parametrize('alpha,beta,gamma', [(2.0, 1.0, 0.1), (0.7, 5.5, 0.4),
                                              (3.1, 0.1, 0.0)])
def test_logits_equal_numpy(alpha, beta, gamma):
    view_feats, labels, weights, feats = ape_problem(seed=4)
    head = build_head(
        view_feats,
        labels,
        weights,
        feat_num=12,
        alpha=alpha,
        beta=beta,
        gamma=gamma)
    f, W, values = as_np(feats, weights, head.cache.values)
    keys = np_keys(view_feats)
    idx = np_indices(W, keys, labels.numpy(), 12)
    expected = np_ape_logits(f, W, keys, values, idx, alpha, beta, gamma)
    logits = head((feats, ))
    assert logits.shape == (9, 5)
    np.testing.assert_allclose(
        logits.double().numpy(),
        expected,
        rtol=1e-5,
        atol=1e-5 * np.abs(expected).max())
    # The zero-shot term uses all channels: alpha = 0 is zero-shot CLIP.
    head.set_hyperparameters(alpha=0.0)
    assert torch.equal(head((feats, )), 100.0 * feats @ weights)


def test_all_channels_and_gamma_zero_is_tip_adapter():
    view_feats, labels, weights, feats = ape_problem(seed=5)
    ape = build_head(
        view_feats,
        labels,
        weights,
        feat_num=32,
        alpha=1.7,
        beta=3.3,
        gamma=0.0)
    tip = TipAdapterHead(num_classes=5, alpha=1.7, beta=3.3)
    tip.set_zero_shot_weights(weights)
    tip.fit((view_feats, ), labels)
    assert torch.equal(ape.cache.keys, tip.cache.keys)
    assert sorted(ape.cache.feat_indices.tolist()) == list(range(32))
    torch.testing.assert_close(
        ape((feats, )), tip((feats, )), rtol=1e-5, atol=1e-5)
    # ... and not with fewer channels or gamma > 0.
    ape.set_hyperparameters(gamma=0.4)
    assert not torch.allclose(ape((feats, )), tip((feats, )), atol=1e-3)


#: A grid where alpha and gamma matter on this small problem (the
#: reference ImageNet grid, (7, 7, 0.5), barely moves its accuracy).
SCALE, STEPS = (7, 30, 2), (10, 6, 4)


def search_problem(seed, num=120, channels=24, classes=6, shots=4):
    p = random_problem(seed=seed, classes=classes, channels=channels,
                       shots=shots, num_val=num, noise=0.3)
    head = APEHead(
        num_classes=classes,
        feat_num=16,
        search_scale=SCALE,
        search_step=STEPS)
    head.set_zero_shot_weights(p['zero_shot_weights'])
    head.fit((p['support'], ), p['support_labels'])
    return head, F.normalize(p['val'], dim=-1), p['val_labels']


def triple_loop(head, feats, labels):
    """The reference search: for beta, for alpha, for gamma; first best
    wins. Everything from scratch but the refined tensors."""
    scale, steps = SCALE, STEPS
    betas = [i * (scale[0] - 0.1) / steps[0] + 0.1 for i in range(steps[0])]
    alphas = [i * (scale[1] - 0.1) / steps[1] + 0.1 for i in range(steps[1])]
    gammas = [i * scale[2] / steps[2] for i in range(steps[2])]
    idx = head.cache.feat_indices
    keys = F.normalize(head.cache.keys[:, idx], dim=1)
    affinity = F.normalize(feats[:, idx], dim=1) @ keys.t()
    clip_logits = 100.0 * feats @ head.zero_shot_weights
    best = (0.0, None, None, None)
    for beta in betas:
        for alpha in alphas:
            for gamma in gammas:
                soft = head.cache.values * torch.exp(
                    torch.tensor(gamma, dtype=torch.float32) * head.cache_div)
                cache_logits = torch.exp(-beta * (1 - affinity)) @ soft
                logits = clip_logits + alpha * cache_logits
                acc = (logits.argmax(1) == labels).double().mean().item()
                if acc * 100 > best[0]:
                    best = (acc * 100, beta, alpha, gamma)
    return best


@pytest.mark.parametrize('chunk_size,max_elements', [(120, 2**26), (50, 5000),
                                                     (33, 1)])
@pytest.mark.parametrize('seed', [0, 1])
def test_search_equals_triple_loop(seed, chunk_size, max_elements):
    head, feats, labels = search_problem(seed)
    acc, beta, alpha, gamma = triple_loop(head, feats, labels)
    result = grid_search(head, (feats, ), labels, chunk_size, max_elements)
    assert result.best == {'beta': beta, 'alpha': alpha, 'gamma': gamma}
    assert gamma > 0  # the value weights matter here
    assert result.accuracy == pytest.approx(acc, abs=1e-9)
    assert result.accuracy_grid.shape == (10, 6, 4)
    counts = head.count_correct((feats, ), labels, {}, max_elements)
    assert counts.dtype == torch.int64 and counts.shape == (10, 6, 4)


class LargestTensor(TorchDispatchMode):
    """Records the most elements of any tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out, ):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize('max_elements', [1500, 4000])
def test_count_correct_respects_max_elements(max_elements):
    head, feats, labels = search_problem(4)
    feats, labels = feats[:50], labels[:50]  # (M, NK) = 1200 elements
    expected = head.count_correct((feats, ), labels, {}, 2**26)
    with LargestTensor() as mode:
        counts = head.count_correct((feats, ), labels, {}, max_elements)
    assert torch.equal(counts, expected)
    assert 1200 < mode.largest <= max_elements


def test_search_counts_every_point_as_forward():
    head, feats, labels = search_problem(2, num=40)
    result = grid_search(head, (feats, ), labels, chunk_size=16,
                         max_elements=3000)
    grid = head.search_grid()
    assert len(torch.unique(result.accuracy_grid)) > 20
    for i in (0, 4, 9):
        for j in (0, 5):
            for k in (0, 1, 3):
                head.set_hyperparameters(
                    beta=grid['beta'][i],
                    alpha=grid['alpha'][j],
                    gamma=grid['gamma'][k])
                acc = (head((feats, )).argmax(1) == labels).double().mean()
                assert result.accuracy_grid[i, j, k].item() == \
                    pytest.approx(acc.item() * 100)


def test_first_best_wins_ties_and_report_handles_3d(tmp_path):
    head, feats, labels = search_problem(3, num=30)
    head.cache.values.zero_()  # every point: the zero-shot accuracy
    result = grid_search(head, (feats, ), labels)
    assert torch.unique(result.accuracy_grid).numel() == 1
    assert result.best == {'beta': 0.1, 'alpha': 0.1, 'gamma': 0.0}
    paths = save_search_report(result, str(tmp_path))
    assert [p.rsplit('.', 1)[1] for p in paths] == ['json']
    report = json.loads((tmp_path / 'hyperparameter_search.json').read_text())
    assert np.array(report['accuracy_grid']).shape == (10, 6, 4)
    assert set(report['top5'][0]) == {'beta', 'alpha', 'gamma', 'accuracy'}


def test_search_grid_follows_reference_formula():
    head = APEHead(num_classes=2)
    grid = head.search_grid()
    assert list(grid) == ['beta', 'alpha', 'gamma']
    assert [len(g) for g in grid.values()] == [200, 20, 5]
    assert grid['beta'][5].item() == pytest.approx(5 * 6.9 / 200 + 0.1)
    assert grid['alpha'][19].item() == pytest.approx(19 * 6.9 / 20 + 0.1)
    assert grid['gamma'].tolist() == pytest.approx([0, .1, .2, .3, .4])
    assert head.hyperparameters == {'beta': 1.0, 'alpha': 2.0, 'gamma': 0.1}


@pytest.mark.parametrize('searched', [True, False])
def test_state_dict_round_trip(searched):
    view_feats, labels, weights, feats = ape_problem(seed=6)
    head = build_head(view_feats, labels, weights, feat_num=10)
    best = dict(beta=4.25, alpha=2.5, gamma=0.3)
    if searched:
        head.apply_search(best)
    else:
        head.set_hyperparameters(**best)
    fresh = APEHead(num_classes=5)
    assert not fresh.is_fitted and not fresh.cache.has_selection
    fresh.load_state_dict(head.state_dict())
    assert fresh.is_fitted and fresh.cache.has_selection
    assert fresh.searched == searched
    assert fresh.hyperparameters == {'beta': 4.25, 'alpha': 2.5,
                                     'gamma': 0.3}
    assert fresh.fixed_hyperparameters() == {'alpha': 2.0, 'beta': 1.0,
                                             'gamma': 0.1}
    assert fresh.cache.feat_indices.dtype == torch.long
    assert torch.equal(fresh.cache.feat_indices, head.cache.feat_indices)
    assert torch.equal(fresh.cache_div, head.cache_div)
    assert torch.equal(fresh((feats, )), head((feats, )))


def test_old_style_state_dict_loads():
    """A checkpoint of the version before the cache component: keys,
    values, beta and the channel indices at the head's top level."""
    view_feats, labels, weights, feats = ape_problem(seed=8)
    head = build_head(view_feats, labels, weights, feat_num=10)
    head.apply_search(dict(beta=3.5, alpha=1.5, gamma=0.2))
    new = head.state_dict()
    renamed = {'cache.keys': 'cache_keys', 'cache.values': 'cache_values',
               'cache.beta': 'beta', 'cache.feat_indices': 'feat_indices'}
    # Earlier versions had no class-name digest either.
    old = {renamed.get(k, k): v.clone() for k, v in new.items()
           if k != 'class_names_digest'}
    assert set(old) == {'cache_keys', 'cache_values', 'beta', 'feat_indices',
                        'alpha', 'gamma', 'cache_div', 'zero_shot_weights',
                        'clip_logit_scale', 'is_searched'}
    fresh = APEHead(num_classes=5)
    fresh.load_state_dict(old, strict=True)
    assert fresh.searched and fresh.hyperparameters == {
        'beta': 3.5, 'alpha': 1.5, 'gamma': 0.2}
    assert torch.equal(fresh.cache.feat_indices, head.cache.feat_indices)
    assert torch.equal(fresh((feats, )), head((feats, )))


def test_refinement_follows_cache_and_errors_are_clear():
    view_feats, labels, weights, feats = ape_problem(seed=7)
    head = APEHead(num_classes=5, feat_num=8)
    with pytest.raises(RuntimeError, match='zero_shot_weights'):
        head.fit((view_feats, ), labels)
    with pytest.raises(ValueError, match=r'feat_num=40.*C=32'):
        build_head(view_feats, labels, weights, feat_num=40)
    # Cache first, weights second (e.g. weights rebuilt for a checkpoint):
    # refined as soon as both are there, the same as the other way round.
    keys = F.normalize(view_feats.mean(0), dim=-1)
    head.cache.set(keys, F.one_hot(labels, 5).float())
    assert head.cache.is_built and not head.cache.has_selection
    assert not head.is_fitted
    with pytest.raises(RuntimeError, match='zero_shot_weights'):
        head((feats, ))
    head.set_zero_shot_weights(weights)
    assert head.is_fitted
    other = build_head(view_feats, labels, weights, feat_num=8)
    assert torch.equal(head.cache.feat_indices, other.cache.feat_indices)
    torch.testing.assert_close(head((feats, )), other((feats, )))
    with pytest.raises(ValueError, match='3 values'):
        APEHead(num_classes=5, search_scale=(7, 3), search_step=(200, 20))
    with pytest.raises(TypeError, match=r'APEHead.*bare tensor'):
        head(feats)


def test_config_parses_with_reference_values():
    cfg = Config.fromfile(str(CONFIGS / 'ape_imagenet_16shot.py'))
    head = cfg.model.head
    assert head.type == 'APEHead'
    assert (head.num_classes, head.alpha, head.beta, head.gamma,
            head.feat_num) == (1000, 2.0, 1.0, 0.1, 500)
    assert tuple(head.criterion_weights) == (0.7, 0.3)
    assert tuple(head.search_scale) == (7, 7, 0.5)
    assert tuple(head.search_step) == (200, 20, 5)
    assert 'train_cache_keys' not in head
    assert cfg.model.templates == 'imagenet'
    assert cfg.fewshot_dataloader.dataset.num_shots == 16
    assert [h.type for h in cfg.custom_hooks
            ] == ['BuildCacheHook', 'HyperparameterSearchHook']
    built = MODELS.build(head)
    assert isinstance(built, APEHead) and built.feat_num == 500
