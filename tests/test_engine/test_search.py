"""The vectorised, chunked search equals plain loops; it never changes the
head; its hits follow the evaluator's rule on exact ties; its reports."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import random_problem
from mmengine.evaluator import Evaluator
from mmpretrain.structures import DataSample

from tip_adapter_mm.engine import grid_search, save_search_report
from tip_adapter_mm.evaluation import StableAccuracy
from tip_adapter_mm.models import (CacheOnlyHead, DualCacheTipAdapterHead,
                                   TipAdapterHead)

SCALE, STEPS = (7, 3), (30, 12)


def make_head_and_data(seed=0, num=150, **kwargs):
    """A fitted Tip-Adapter head (30 x 12 grid), normalised held-out
    features and labels, and the reference tensors: the text weights and
    the keys and values computed here from the raw views."""
    p = random_problem(seed=seed, num_val=num)
    head = TipAdapterHead(num_classes=p['zero_shot_weights'].shape[1],
                          search_scale=SCALE, search_step=STEPS, **kwargs)
    head.set_zero_shot_weights(p['zero_shot_weights'])
    head.fit((p['support'], ), p['support_labels'])
    ref = dict(weights=p['zero_shot_weights'],
               keys=F.normalize(p['support'].mean(dim=0), dim=-1),
               values=F.one_hot(p['support_labels'],
                                head.num_classes).float())
    return head, F.normalize(p['val'], dim=-1), p['val_labels'], ref


def ref_grid(scale, steps):
    """The reference search's linear grid."""
    return [i * (scale - 0.1) / steps + 0.1 for i in range(steps)]


def ref_cache(f, keys, values, beta):
    """``exp(-beta * (1 - f K^T)) @ L`` in plain torch."""
    return torch.exp(-beta * (1 - f @ keys.t())) @ values


def first_argmax(row):
    """The first maximum of a row, by a plain loop."""
    best = 0
    for j in range(1, len(row)):
        if row[j] > row[best]:
            best = j
    return best


def hits(logits, labels):
    """Correct top-1 predictions (first maximum wins), by plain loops."""
    return sum(first_argmax(row) == int(y)
               for row, y in zip(logits.tolist(), labels.tolist()))


def double_loop(feats, labels, weights, keys, values, scale, steps):
    """The reference search: for beta, for alpha, first best wins."""
    clip_logits = 100.0 * feats @ weights
    best = (-1.0, None, None)
    for beta in ref_grid(scale[0], steps[0]):
        cache_logits = ref_cache(feats, keys, values, beta)
        for alpha in ref_grid(scale[1], steps[1]):
            logits = clip_logits + alpha * cache_logits
            acc = (logits.argmax(1) == labels).double().mean().item() * 100
            if acc > best[0]:
                best = (acc, beta, alpha)
    return best


def counts_of(result):
    """Correct predictions per grid point from the accuracy grid."""
    return (result.accuracy_grid * result.num_samples / 100).round().long()


# -- 1. the search equals plain loops ---------------------------------------
@pytest.mark.parametrize('chunk_size,max_elements', [(150, 2**26), (64, 2**26),
                                                     (7, 2**26), (50, 5000),
                                                     (1, 1)])
@pytest.mark.parametrize('seed', [0, 1])
def test_grid_search_equals_double_loop(seed, chunk_size, max_elements):
    head, feats, labels, ref = make_head_and_data(seed)
    acc, beta, alpha = double_loop(feats, labels, ref['weights'],
                                   ref['keys'], ref['values'], SCALE, STEPS)
    result = grid_search(head, (feats, ), labels, chunk_size, max_elements)
    assert result.best == {'beta': beta, 'alpha': alpha}
    assert result.accuracy == pytest.approx(acc, abs=1e-9)
    assert result.accuracy_grid.shape == STEPS
    assert result.num_samples == 150
    assert not result.stages and result.num_points == 30 * 12


def test_grid_counts_every_point():
    head, feats, labels, _ = make_head_and_data(2, num=40)
    result = grid_search(head, (feats, ), labels, chunk_size=16)
    grid = head.search_grid()
    for i in (0, 13, 29):
        for j in (0, 5, 11):
            head.set_hyperparameters(
                beta=grid['beta'][i], alpha=grid['alpha'][j])
            acc = (head((feats, )).argmax(1) == labels).double().mean() * 100
            assert result.accuracy_grid[i,
                                        j].item() == pytest.approx(acc.item())


def test_first_best_wins_ties():
    head, feats, labels, _ = make_head_and_data(3, num=30)
    head.cache.set(head.cache.keys, torch.zeros_like(head.cache.values))
    # Without cache values every point has the zero-shot accuracy.
    result = grid_search(head, (feats, ), labels)
    assert torch.unique(result.accuracy_grid).numel() == 1
    assert result.best == {'beta': 0.1, 'alpha': 0.1}


def test_features_are_checked():
    head, feats, labels, _ = make_head_and_data(4, num=20)
    with pytest.raises(TypeError, match=r'grid_search\(TipAdapterHead\).*'
                       r'bare tensor.*pass \(feats, \)'):
        grid_search(head, feats, labels)
    with pytest.raises(ValueError, match='1 visual encoder'):
        grid_search(head, (feats, feats), labels)
    with pytest.raises(ValueError, match='19 labels for 20 features'):
        grid_search(head, (feats, ), labels[:19])


# -- 2. the search never changes the head -----------------------------------
def snapshot(head):
    state = {k: v.detach().clone() for k, v in head.state_dict().items()}
    return dict(head.hyperparameters), head.searched, state


def assert_unchanged(head, before):
    hyper, searched, state = before
    assert head.hyperparameters == hyper
    assert head.searched == searched
    now = head.state_dict()
    assert list(now) == list(state)
    for key, value in state.items():
        assert now[key].dtype == value.dtype, key
        assert torch.equal(now[key], value), key


def dual_problem(seed=0, num=120, channels=16, channels2=12, classes=5,
                 shots=4):
    """Features of two encoders of the same images: the first from
    ``random_problem``, the second a fixed random map of them plus noise
    (another view of the same classes)."""
    p = random_problem(seed=seed, classes=classes, channels=channels,
                       shots=shots, num_val=num, noise=1.2)
    g = torch.Generator().manual_seed(seed + 1000)
    proj = torch.randn(channels, channels2, generator=g)

    def second(x):
        return x @ proj + 0.5 * torch.randn(*x.shape[:-1], channels2,
                                            generator=g)

    return dict(support=(p['support'], second(p['support'])),
                support_labels=p['support_labels'],
                feats=(F.normalize(p['val'], dim=-1),
                       F.normalize(second(p['val']), dim=-1)),
                labels=p['val_labels'], weights=p['zero_shot_weights'])


SCALE2, STEPS2 = (6.0, 4.0), (8, 5)


def dual_head(d, **kwargs):
    head = DualCacheTipAdapterHead(
        num_classes=d['weights'].shape[1], search_scale=SCALE,
        search_step=(10, 6), second_search_scale=SCALE2,
        second_search_step=STEPS2, clip_logit_scale=10.0, **kwargs)
    head.set_zero_shot_weights(d['weights'])
    head.fit(d['support'], d['support_labels'])
    return head


@pytest.mark.parametrize('searched', [False, True])
@pytest.mark.parametrize('train_cache_keys', [False, True])
def test_search_does_not_change_tip_adapter_head(searched, train_cache_keys):
    head, feats, labels, _ = make_head_and_data(
        5, num=60, alpha=1.7, beta=2.9, train_cache_keys=train_cache_keys)
    if searched:
        head.apply_search({'beta': 5.0, 'alpha': 0.3})
    logits = head((feats, )).detach().clone()
    before = snapshot(head)
    result = grid_search(head, (feats, ), labels, chunk_size=25)
    assert result.best != before[0]  # the search did find another point
    assert_unchanged(head, before)
    assert head.cache.keys.requires_grad == train_cache_keys
    assert torch.equal(head((feats, )), logits)
    # The caller applies the result.
    head.apply_search(result.best)
    assert head.searched and head.hyperparameters == result.best


@pytest.mark.parametrize('searched', [False, True])
def test_search_does_not_change_staged_dual_cache_head(searched):
    d = dual_problem(1)
    head = dual_head(d, alpha=1.3, beta=2.2, alpha2=0.7, beta2=4.4)
    if searched:
        head.apply_search(
            {'beta': 1.5, 'alpha': 0.5, 'beta2': 2.5, 'alpha2': 0.25})
    logits = head(d['feats']).detach().clone()
    before = snapshot(head)
    result = grid_search(head, d['feats'], d['labels'], chunk_size=50)
    assert len(result.stages) == 2
    assert result.best != before[0]
    assert_unchanged(head, before)
    assert torch.equal(head(d['feats']), logits)

    # Nor when a stage fails half-way.
    def boom(*args, **kwargs):
        raise RuntimeError('boom')

    head.count_correct_second = boom
    with pytest.raises(RuntimeError, match='boom'):
        grid_search(head, d['feats'], d['labels'])
    del head.count_correct_second
    assert_unchanged(head, before)


def test_staged_search_stage_two_uses_stage_one_best():
    d = dual_problem(0)
    f, f2 = d['feats']
    labels = d['labels']
    # Current values far from any best: stage 2 must not read them.
    head = dual_head(d, alpha=0.0, beta=0.5, alpha2=3.0, beta2=1.0)
    result = grid_search(head, d['feats'], labels, chunk_size=33,
                         max_elements=3000)
    first, second = result.stages
    keys = F.normalize(d['support'][0].mean(dim=0), dim=-1)
    keys2 = F.normalize(d['support'][1].mean(dim=0), dim=-1)
    values = F.one_hot(d['support_labels'], 5).float()
    clip = 10.0 * f @ d['weights']

    # Stage 1: Tip-Adapter's (beta, alpha) grid with the second cache off.
    betas, alphas = ref_grid(SCALE[0], 10), ref_grid(SCALE[1], 6)
    expected1 = torch.zeros(len(betas), len(alphas), dtype=torch.int64)
    for i, beta in enumerate(betas):
        cache = ref_cache(f, keys, values, beta)
        for j, alpha in enumerate(alphas):
            expected1[i, j] = hits(clip + alpha * cache, labels)
    assert torch.equal(counts_of(first), expected1)
    i, j = np.unravel_index(int(np.argmax(expected1.numpy())),
                            expected1.shape)
    assert first.best == {'beta': pytest.approx(betas[i]),
                          'alpha': pytest.approx(alphas[j])}

    # Stage 2: (beta2, alpha2) with the first cache at stage 1's best.
    betas2 = ref_grid(SCALE2[0], STEPS2[0])
    alphas2 = [0.0] + ref_grid(SCALE2[1], STEPS2[1])

    def stage_two(beta, alpha):
        base = clip + alpha * ref_cache(f, keys, values, beta)
        counts = torch.zeros(len(betas2), len(alphas2), dtype=torch.int64)
        for k, beta2 in enumerate(betas2):
            cache2 = ref_cache(f2, keys2, values, beta2)
            for m, alpha2 in enumerate(alphas2):
                counts[k, m] = hits(base + alpha2 * cache2, labels)
        return counts

    expected2 = stage_two(betas[i], alphas[j])
    assert torch.equal(counts_of(second), expected2)
    # The check tells the two apart: at the head's own (beta, alpha) the
    # counts differ.
    assert not torch.equal(stage_two(0.5, 0.0), expected2)
    k, m = np.unravel_index(int(np.argmax(expected2.numpy())),
                            expected2.shape)
    assert second.best == {'beta2': pytest.approx(betas2[k]),
                           'alpha2': pytest.approx(alphas2[m])}
    assert result.best == {**first.best, **second.best}
    assert result.accuracy == second.accuracy
    assert result.num_points == expected1.numel() + expected2.numel()


# -- 3. exact ties: the search counts as the evaluator does ------------------
def tied_problem(tie_label):
    """Zero-shot weights with classes 0 and 1 identical and a zero cache:
    wherever class 0 wins, 0 and 1 tie exactly. Tied samples are labelled
    ``tie_label``, the others by their (untied) winner or not."""
    g = torch.Generator().manual_seed(11)
    channels, num = 8, 40
    w = F.normalize(torch.randn(channels, 2, generator=g), dim=0)
    weights = torch.stack([w[:, 0], w[:, 0], w[:, 1]], dim=1).contiguous()
    feats = F.normalize(torch.randn(num, channels, generator=g), dim=-1)
    head = TipAdapterHead(num_classes=3, search_scale=(3, 2),
                          search_step=(3, 2))
    head.set_zero_shot_weights(weights)
    head.cache.set(F.normalize(torch.randn(6, channels, generator=g), dim=-1),
                   torch.zeros(6, 3))
    clip = (100.0 * feats.double() @ weights.double())
    tied = clip[:, 0] >= clip[:, 2]
    labels = torch.where(tied, torch.full((num, ), tie_label),
                         torch.arange(num) % 3)
    return head, feats, labels, tied


def stable_accuracy(preds):
    evaluator = Evaluator(StableAccuracy(topk=(1, )))
    evaluator.process(preds)
    return evaluator.evaluate(len(preds))['accuracy/top1']


@pytest.mark.parametrize('tie_label', [0, 1])
def test_search_counts_ties_as_the_evaluator(tie_label):
    head, feats, labels, tied = tied_problem(tie_label)
    logits = head((feats, ))
    # Preconditions: exact ties in the head's own float32 logits.
    assert 5 < int(tied.sum()) < len(labels) - 5
    assert torch.equal(logits[tied, 0], logits[tied, 1])
    assert (logits[~tied, 2] > logits[~tied, 0]).all()

    # Independent count: the first maximum wins, by plain loops.
    expected = hits(logits, labels)
    untied_hits = int((labels[~tied] == 2).sum())
    if tie_label == 0:  # every tie is a hit (the lower index is the label)
        assert expected == untied_hits + int(tied.sum())
    else:  # every tie is a miss (the higher index is the label)
        assert expected == untied_hits

    result = grid_search(head, (feats, ), labels, chunk_size=16)
    assert torch.equal(counts_of(result),
                       torch.full(result.accuracy_grid.shape, expected))

    samples = [DataSample().set_gt_label(int(y)) for y in labels]
    preds = head.predict((feats, ), samples)
    assert [int(p.pred_label) for p in preds] == [
        first_argmax(row) for row in logits.tolist()]
    assert all(int(p.pred_label) == 0
               for p, t in zip(preds, tied.tolist()) if t)
    # Exactly tied scores too: the evaluator ranks them by the same rule.
    scores = torch.stack([p.pred_score for p in preds])
    assert torch.equal(scores[tied, 0], scores[tied, 1])
    accuracy = stable_accuracy(preds)
    assert accuracy == pytest.approx(100.0 * expected / len(labels),
                                     abs=1e-9)
    assert accuracy == pytest.approx(result.accuracy, abs=1e-9)


# -- 4. reports -------------------------------------------------------------
def is_png(path):
    return path.read_bytes()[:4] == b'\x89PNG'


def test_report_files(tmp_path):
    head, feats, labels, _ = make_head_and_data(4, num=20)
    result = grid_search(head, (feats, ), labels)
    paths = save_search_report(result, str(tmp_path))
    assert [p.rsplit('.', 1)[1] for p in paths] == ['json', 'png']
    report = json.loads((tmp_path / 'hyperparameter_search.json').read_text())
    assert report['best'] == result.best
    assert np.array(report['accuracy_grid']).shape == STEPS
    assert report['top5'][0]['accuracy'] == result.accuracy
    assert is_png(tmp_path / 'hyperparameter_search.png')


def test_report_of_a_staged_search(tmp_path):
    d = dual_problem(1, num=40)
    result = grid_search(dual_head(d), d['feats'], d['labels'])
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
    assert np.array(report['stages'][0]['accuracy_grid']).shape == (10, 6)
    assert np.array(report['stages'][1]['accuracy_grid']).shape == (
        STEPS2[0], STEPS2[1] + 1)
    assert report['best'] == result.best
    assert set(report['best']) == {'beta', 'alpha', 'beta2', 'alpha2'}


def test_report_of_a_one_dimensional_search(tmp_path):
    p = random_problem(seed=3, classes=4, channels=16, shots=3, num_val=60)
    head = CacheOnlyHead(num_classes=4, search_step=15)
    head.fit((p['support'], ), p['support_labels'])
    result = grid_search(head, (F.normalize(p['val'], dim=-1), ),
                         p['val_labels'])
    paths = save_search_report(result, str(tmp_path))
    assert [p.rsplit('.', 1)[1] for p in paths] == ['json', 'png']
    assert is_png(tmp_path / 'hyperparameter_search.png')
    report = json.loads((tmp_path / 'hyperparameter_search.json').read_text())
    assert list(report['grid']) == ['beta'] and 'stages' not in report
    assert len(report['accuracy_grid']) == 15


def test_report_of_a_joint_search_has_no_plot(tmp_path):
    d = dual_problem(2, num=30)
    head = DualCacheTipAdapterHead(num_classes=5, search_mode='joint',
                                   search_step=(3, 2),
                                   second_search_step=(2, 2))
    head.set_zero_shot_weights(d['weights'])
    head.fit(d['support'], d['support_labels'])
    result = grid_search(head, d['feats'], d['labels'])
    assert np.array(result.accuracy_grid).shape == (3, 2, 2, 3)
    paths = save_search_report(result, str(tmp_path))
    assert [p.rsplit('/', 1)[1] for p in paths] == [
        'hyperparameter_search.json']


def test_unchunked_stage_gets_the_whole_split_in_one_call():
    from collections import OrderedDict

    from tip_adapter_mm.engine.search import search_stage
    from tip_adapter_mm.models.heads import SearchStage
    sizes = []

    def count(feats, labels, params, max_elements):
        sizes.append(len(labels))
        return torch.tensor([int((labels == 0).sum()), 0])

    feats = (torch.randn(10, 4), )
    labels = torch.tensor([0, 1] * 5)
    grid = OrderedDict(x=torch.tensor([1.0, 2.0]))
    chunked = search_stage(SearchStage(grid, count), feats, labels, {}, 3)
    assert sizes == [3, 3, 3, 1]
    sizes.clear()
    whole = search_stage(SearchStage(grid, count, chunked=False), feats,
                         labels, {}, 3)
    assert sizes == [10]
    assert torch.equal(chunked.accuracy_grid, whole.accuracy_grid)
    assert whole.best == {'x': 1.0}
