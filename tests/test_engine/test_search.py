"""The vectorised, chunked search equals a plain double loop."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tip_adapter_mm.engine import grid_search, save_search_report
from tip_adapter_mm.models import TipAdapterHead


def make_head_and_data(seed=0, num=150, channels=24, classes=6, shots=4):
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(classes, channels, generator=g), dim=-1)
    labels = torch.randint(0, classes, (num, ), generator=g)
    feats = F.normalize(
        centres[labels] + 0.9 * torch.randn(num, channels, generator=g),
        dim=-1)
    key_labels = torch.arange(classes).repeat_interleave(shots)
    keys = F.normalize(
        centres[key_labels] +
        0.9 * torch.randn(len(key_labels), channels, generator=g),
        dim=-1)
    weights = F.normalize(
        centres.t() + 0.8 * torch.randn(channels, classes, generator=g), dim=0)
    head = TipAdapterHead(
        num_classes=classes, search_scale=(7, 3), search_step=(30, 12))
    head.set_zero_shot_weights(weights)
    head.set_cache(keys, F.one_hot(key_labels, classes).float())
    return head, feats, labels


def double_loop(feats, labels, weights, keys, values, scale, steps):
    """The reference search: for beta, for alpha, first best wins."""
    betas = [i * (scale[0] - 0.1) / steps[0] + 0.1 for i in range(steps[0])]
    alphas = [i * (scale[1] - 0.1) / steps[1] + 0.1 for i in range(steps[1])]
    clip_logits = 100.0 * feats @ weights
    affinity = feats @ keys.t()
    best = (0.0, None, None)
    for beta in betas:
        cache_logits = torch.exp(-beta * (1 - affinity)) @ values
        for alpha in alphas:
            logits = clip_logits + alpha * cache_logits
            acc = (logits.argmax(1) == labels).double().mean().item() * 100
            if acc > best[0]:
                best = (acc, beta, alpha)
    return best


@pytest.mark.parametrize('chunk_size,max_elements', [(150, 2**26), (64, 2**26),
                                                     (7, 2**26), (50, 5000),
                                                     (1, 1)])
@pytest.mark.parametrize('seed', [0, 1])
def test_grid_search_equals_double_loop(seed, chunk_size, max_elements):
    head, feats, labels = make_head_and_data(seed)
    acc, beta, alpha = double_loop(feats, labels, head.zero_shot_weights,
                                   head.cache_keys, head.cache_values, (7, 3),
                                   (30, 12))
    result = grid_search(head, feats, labels, chunk_size, max_elements)
    assert result.best == {'beta': beta, 'alpha': alpha}
    assert result.accuracy == pytest.approx(acc, abs=1e-9)
    assert result.accuracy_grid.shape == (30, 12)
    assert result.num_samples == 150


def test_grid_counts_every_point():
    head, feats, labels = make_head_and_data(2, num=40)
    result = grid_search(head, feats, labels, chunk_size=16)
    grid = head.search_grid()
    for i in (0, 13, 29):
        for j in (0, 5, 11):
            head.set_hyperparameters(
                beta=grid['beta'][i], alpha=grid['alpha'][j])
            acc = (head((feats, )).argmax(1) == labels).double().mean() * 100
            assert result.accuracy_grid[i,
                                        j].item() == pytest.approx(acc.item())


def test_first_best_wins_ties():
    head, feats, labels = make_head_and_data(3, num=30)
    head.set_cache(head.cache_keys, torch.zeros_like(head.cache_values))
    # Without cache values every point has the zero-shot accuracy.
    result = grid_search(head, feats, labels)
    assert torch.unique(result.accuracy_grid).numel() == 1
    assert result.best == {'beta': 0.1, 'alpha': 0.1}


def test_report_files(tmp_path):
    head, feats, labels = make_head_and_data(4, num=20)
    result = grid_search(head, feats, labels)
    paths = save_search_report(result, str(tmp_path))
    assert [p.rsplit('.', 1)[1] for p in paths] == ['json', 'png']
    report = json.loads((tmp_path / 'hyperparameter_search.json').read_text())
    assert report['best'] == result.best
    assert np.array(report['accuracy_grid']).shape == (30, 12)
    assert report['top5'][0]['accuracy'] == result.accuracy
    assert (tmp_path / 'hyperparameter_search.png').read_bytes()[:4] == \
        b'\x89PNG'
