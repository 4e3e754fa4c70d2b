"""After the search: hand-set hyperparameters kept, a warning when the best
point is on an edge of the grid (naming the key that widens it), the
cache declined (best = zero-shot) in the report; the cache-only head's
default beta grid fitted to the features."""
import glob
import json
import logging
import os.path as osp
from argparse import Namespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import random_problem, tiny_config
from mmengine.config import Config

from tip_adapter_mm.engine.hooks.search_hook import (
    hand_set_hyperparameters, keep_hand_set_hyperparameters)
from tip_adapter_mm.engine.search import (SearchResult, declined, grid_edges,
                                          grid_search, search_with_kept,
                                          widening_key, zero_shot_top1)
from tip_adapter_mm.models import (APEHead, CacheOnlyHead,
                                   DualCacheTipAdapterHead, TipAdapterHead)


def tip_head(p, **kwargs):
    head = TipAdapterHead(num_classes=p['zero_shot_weights'].shape[1],
                          **kwargs)
    head.set_zero_shot_weights(p['zero_shot_weights'])
    head.fit((p['support'], ), p['support_labels'])
    return head


def np_tip_hits(p, alpha, beta):
    """Tip-Adapter's hits, in NumPy from the raw problem."""
    f = F.normalize(p['val'], dim=-1).double().numpy()
    keys = F.normalize(p['support'].mean(dim=0), dim=-1).double().numpy()
    values = np.eye(p['zero_shot_weights'].shape[1])[
        p['support_labels'].numpy()]
    w = p['zero_shot_weights'].double().numpy()
    logits = 100.0 * f @ w + alpha * np.exp(-beta * (1 - f @ keys.T)) @ values
    return int((logits.argmax(1) == p['val_labels'].numpy()).sum())


def test_search_with_alpha_kept_equals_numpy():
    p = random_problem(seed=3, num_val=90)
    head = tip_head(p, alpha=0.5, search_scale=(7, 3), search_step=(12, 6))
    feats = (F.normalize(p['val'], dim=-1), )
    result = search_with_kept(head, feats, p['val_labels'], {'alpha': 0.5})
    assert list(result.grid) == ['beta'] and result.kept == {'alpha': 0.5}
    betas = [i * 6.9 / 12 + 0.1 for i in range(12)]
    expected = [np_tip_hits(p, 0.5, b) for b in betas]
    hits = (result.accuracy_grid * 90 / 100).round().long().tolist()
    assert hits == expected
    assert result.best['beta'] == pytest.approx(
        betas[int(np.argmax(expected))])
    # The head is left as it was.
    assert head.hyperparameters['alpha'] == 0.5 and not head.searched
    # alpha = 0 kept: zero-shot exactly, so declined.
    kept0 = search_with_kept(head, feats, p['val_labels'], {'alpha': 0.0})
    zero = zero_shot_top1(head, feats, p['val_labels'])
    assert zero == pytest.approx(np_tip_hits(p, 0.0, 1.0) * 100 / 90)
    assert kept0.accuracy == pytest.approx(zero)
    assert declined(kept0, zero) is True


def test_declined_definition():
    grid = {'beta': torch.tensor([1.0, 2.0]), 'alpha': torch.tensor([0.5])}
    result = SearchResult(best={'beta': 1.0, 'alpha': 0.5}, accuracy=60.0,
                          grid=grid, accuracy_grid=torch.zeros(2, 1),
                          num_samples=10)
    assert declined(result, 60.0) is True  # no better than zero-shot
    assert declined(result, 59.9) is False
    assert declined(result, None) is None  # no zero-shot term
    result.best['alpha'] = 0.0
    assert declined(result, 10.0) is True  # best = zero-shot
    two = SearchResult(best={'alpha': 0.0, 'alpha2': 0.3}, accuracy=70.0,
                       grid={}, accuracy_grid=torch.zeros(1),
                       num_samples=10)
    assert declined(two, 60.0) is False  # the second cache still weighs


def test_edges_and_widening_keys():
    p = random_problem(seed=1, num_val=60)
    # A coarse alpha grid whose top is the best.
    head = tip_head(p, search_scale=(7, 3), search_step=(6, 4))
    feats = (F.normalize(p['val'], dim=-1), )
    result = grid_search(head, feats, p['val_labels'])
    acc = np.array([[np_tip_hits(p, a, b) for a in [
        i * 2.9 / 4 + 0.1 for i in range(4)]] for b in [
        i * 6.9 / 6 + 0.1 for i in range(6)]])
    bi, ai = np.unravel_index(int(np.argmax(acc)), acc.shape)
    expected = []
    for name, i, line in (('beta', bi, acc[:, ai]), ('alpha', ai,
                                                     acc[bi, :])):
        if line.max() > line.min() and i in (0, len(line) - 1):
            expected.append((name, 'lower' if i == 0 else 'upper'))
    assert ('alpha', 'upper') in expected
    assert [(e['name'], e['edge']) for e in grid_edges(result)] == expected
    assert widening_key(head, 'beta') == 'model.head.search_scale[0]'
    assert widening_key(head, 'alpha') == 'model.head.search_scale[1]'
    ape = APEHead(num_classes=4)
    assert widening_key(ape, 'gamma') == 'model.head.search_scale[2]'
    dual = DualCacheTipAdapterHead(num_classes=4)
    assert widening_key(dual, 'alpha') == 'model.head.search_scale[1]'
    assert widening_key(dual, 'beta2') == \
        'model.head.second_search_scale[0]'
    assert widening_key(CacheOnlyHead(num_classes=4), 'beta') == \
        'model.head.search_scale'


def test_one_point_and_flat_axes_are_not_edges():
    grid = {'beta': torch.tensor([1.0, 3.0, 5.0]),
            'alpha': torch.tensor([1.0])}
    result = SearchResult(best={'beta': 3.0, 'alpha': 1.0}, accuracy=1.0,
                          grid=grid,
                          accuracy_grid=torch.tensor([[1.], [2.], [3.]]),
                          num_samples=1)
    assert grid_edges(result) == []
    result.best['beta'] = 5.0
    assert grid_edges(result) == [dict(name='beta', value=5.0,
                                       edge='upper')]
    result.accuracy_grid = torch.ones(3, 1)  # beta does not matter
    assert grid_edges(result) == []


def test_hand_set_helpers():
    options = {'model.head.alpha': 0, 'model.head.search_scale': [7, 5],
               'model.backbone.model_name': 'RN50', 'work_dir': 'x'}
    assert hand_set_hyperparameters(options) == ['alpha', 'search_scale']
    cfg = Config(dict(keep_hyperparameters=['beta']))
    assert keep_hand_set_hyperparameters(cfg, options) == [
        'beta', 'alpha', 'search_scale']
    assert cfg.keep_hyperparameters == ['beta', 'alpha', 'search_scale']


# -- the cache-only head's default grid ---------------------------------------


def concentrated_problem(seed=0, noise=1.5, shift=5.0, classes=4, shots=32,
                         queries=150, channels=32, modes=4):
    """Features of a shared offset (distances far more concentrated than
    CLIP's), classes of several modes: the best beta is far above 7."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=channels) * shift
    centres = rng.normal(size=(classes, modes, channels))

    def sample(n):
        y = np.repeat(np.arange(classes), n)
        m = rng.integers(0, modes, len(y))
        x = base + centres[y, m] + rng.normal(size=(len(y), channels)) * noise
        return x / np.linalg.norm(x, axis=1, keepdims=True), y

    keys, key_labels = sample(shots)
    queries, labels = sample(queries)
    return keys, key_labels, queries, labels


def np_cache_accuracy(keys, key_labels, queries, labels, beta):
    values = np.eye(key_labels.max() + 1)[key_labels]
    logits = np.exp(-beta * (1 - queries @ keys.T)) @ values
    return float((logits.argmax(1) == labels).mean() * 100)


def test_cache_only_auto_grid_fits_concentrated_features():
    keys, key_labels, queries, labels = concentrated_problem()
    dist = 1 - keys @ keys.T
    spread = dist[~np.eye(len(keys), dtype=bool)].std()
    top = 10.0 / spread
    assert top > 100  # far above CLIP's 7

    def fitted(**kwargs):
        head = CacheOnlyHead(num_classes=4, search_step=60, **kwargs)
        head.fit((torch.from_numpy(keys).float()[None], ),
                 torch.from_numpy(key_labels))
        return head

    feats = (torch.from_numpy(queries).float(), )
    y = torch.from_numpy(labels)
    auto = fitted()
    assert auto.auto_search_scale() == pytest.approx(top, rel=1e-4)
    np.testing.assert_allclose(auto.search_grid()['beta'].numpy(),
                               np.geomspace(0.1, top, 60), rtol=1e-4)
    wide = grid_search(auto, feats, y)
    narrow = grid_search(fitted(search_scale=7.0), feats, y)
    # The old grid's best is near its top; the fitted grid's inside it,
    # far above 7.
    assert narrow.best['beta'] > 5
    assert grid_edges(wide) == [] and 20 < wide.best['beta'] < top / 2
    # Accuracies checked against NumPy; the fitted grid gains > 5 points.
    assert wide.accuracy == pytest.approx(np_cache_accuracy(
        keys, key_labels, queries, labels, wide.best['beta']), abs=1e-6)
    assert narrow.accuracy == pytest.approx(np_cache_accuracy(
        keys, key_labels, queries, labels, narrow.best['beta']), abs=1e-6)
    assert wide.accuracy > narrow.accuracy + 5


def test_cache_only_auto_grid_keeps_clip_range():
    # The widest spread there is: half the keys at e1, half at -e1
    # (distances 0 and 2): the top is still above CLIP's 7.
    keys = torch.zeros(40, 8)
    keys[:20, 0], keys[20:, 0] = 1.0, -1.0
    dist = 1 - keys.double() @ keys.double().T
    spread = float(dist[~torch.eye(40, dtype=torch.bool)].std(
        unbiased=False))
    head = CacheOnlyHead(num_classes=4)
    head.fit((keys[None], ), torch.arange(40) % 4)
    assert head.auto_search_scale() == pytest.approx(10 / spread)
    assert 7 < head.auto_search_scale() < 10.5
    same = CacheOnlyHead(num_classes=4)  # no spread at all
    same.fit((torch.ones(1, 6, 3), ), torch.arange(6) % 4)
    assert same.auto_search_scale() == 7.0
    with pytest.raises(ValueError, match="search_scale must be 'auto'"):
        CacheOnlyHead(num_classes=4, search_scale='wide')


# -- in a run: alpha=0 by hand is kept and said so; edges; declined -----------


def test_run_keeps_alpha_zero_and_reports(tmp_path, tiny_clip,
                                          image_folders):
    from mmpretrain.registry import RUNNERS
    from tip_adapter_mm.utils import load_config
    head = ("dict(num_classes=3, search_scale=(7.0, 3.0), "
            "search_step=(4, 3), topk=(1, ))")
    path = tiny_config(tmp_path / 'cfg.py', tiny_clip, image_folders,
                       augment_epoch=1, head=head)
    # As tools/test.py CONFIG --cfg-options model.head.alpha=0 reads it.
    cfg = load_config(Namespace(
        config=str(path), launcher='none', local_rank=0,
        work_dir=str(tmp_path / 'work'),
        cfg_options={'model.head.alpha': 0.0}))
    assert cfg.keep_hyperparameters == ['alpha']
    cfg.few_shot_cfg.feature_dir = str(tmp_path / 'features')
    cfg.launcher = 'none'
    runner = RUNNERS.build(cfg)
    metrics = runner.test()
    head = runner.model.head
    assert head.hyperparameters['alpha'] == 0.0
    log, = glob.glob(osp.join(runner.log_dir, '*.log'))
    text = open(log).read()
    assert 'left as set by hand: alpha=0' in text
    assert 'the cache was declined' in text
    report = json.load(open(osp.join(runner.log_dir,
                                     'hyperparameter_search.json')))
    assert report['kept'] == {'alpha': 0.0} and report['declined'] is True
    assert report['accuracy'] == pytest.approx(report['zero_shot_accuracy'])
    assert list(report['grid']) == ['beta']
    # With alpha = 0 every beta ties: the first wins, and it is no edge
    # (beta does not matter there).
    assert report['best']['beta'] == pytest.approx(0.1)
    assert report['edges'] == [] and 'edge of its grid' not in text

    # The zero-shot head (configs/zero_shot_<dataset>.py's) on the same
    # stored features: the same test accuracy as Tip-Adapter at alpha=0.
    zero_head = "dict(_delete_=True, type='ZeroShotHead', num_classes=3)"
    path = tiny_config(tmp_path / 'zero.py', tiny_clip, image_folders,
                       augment_epoch=1, head=zero_head)
    cfg = Config.fromfile(str(path))
    cfg.work_dir = str(tmp_path / 'zero')
    cfg.few_shot_cfg.feature_dir = str(tmp_path / 'features')
    cfg.launcher = 'none'
    zero = RUNNERS.build(cfg).test()
    assert zero['accuracy/top1'] == pytest.approx(metrics['accuracy/top1'])


class Records(logging.Handler):

    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append((record.levelname, record.getMessage()))


def test_hook_warns_once_per_run_and_checks_keep():
    from types import SimpleNamespace

    from tip_adapter_mm.engine.hooks.search_hook import \
        HyperparameterSearchHook
    logger = logging.getLogger('test_search_edges')
    logger.propagate = False
    records = Records()
    logger.addHandler(records)
    runner = SimpleNamespace(logger=logger)
    head = TipAdapterHead(num_classes=3, alpha=0.0)
    result = SearchResult(
        best={'beta': 1.0, 'alpha': 3.0}, accuracy=80.0,
        grid={'beta': torch.tensor([0.1, 1.0, 2.0]),
              'alpha': torch.tensor([1.0, 2.0, 3.0])},
        accuracy_grid=torch.tensor([[1., 2., 3.], [4., 5., 9.],
                                    [1., 2., 3.]]), num_samples=10)
    result.edges = grid_edges(result)
    hook = HyperparameterSearchHook(keep=['alpha', 'search_step'])
    hook.report_outcome(runner, head, result)
    hook.report_outcome(runner, head, result)  # a second search
    warnings = [m for level, m in records.messages if level == 'WARNING']
    assert len(warnings) == 1
    assert 'alpha=3 is on the upper edge' in warnings[0]
    assert 'raise model.head.search_scale[1]' in warnings[0]
    # keep: hyperparameters kept at their values; other arguments fine.
    assert hook.kept_values(head) == {'alpha': 0.0}
    with pytest.raises(ValueError, match=r"'alpah' is not a hyperparameter"
                       r" of TipAdapterHead.*\['alpha', 'beta'\]"):
        HyperparameterSearchHook(keep=['alpah']).kept_values(head)
