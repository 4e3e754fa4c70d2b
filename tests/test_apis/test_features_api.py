"""Bring your own features: fit, search and evaluate a head on tensors,
against NumPy computations written here."""
import numpy as np
import pytest
import torch
from conftest import random_problem
from mmpretrain.registry import MODELS

from tip_adapter_mm.apis import (evaluate_head, fit_head, predict_logits,
                                 search_head)


def normalise(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def numpy_tip_logits(feats, keys, values, weights, alpha, beta):
    f = normalise(feats)
    affinity = f @ keys.T
    cache = np.exp(-beta * (1 - affinity)) @ values
    return 100.0 * f @ weights + alpha * cache


@pytest.fixture
def problem():
    return {k: v for k, v in random_problem(seed=3).items()}


def test_tip_adapter_fit_search_evaluate_match_numpy(problem):
    p = {k: v.numpy() for k, v in problem.items()}
    scale, steps = (7.0, 3.0), (15, 8)
    head = MODELS.build(dict(type='TipAdapterHead', num_classes=6,
                             search_scale=scale, search_step=steps,
                             alpha=1.5, beta=2.0))
    fit_head(head, (problem['support'], ), problem['support_labels'],
             zero_shot_weights=problem['zero_shot_weights'])
    keys = normalise(p['support'].mean(axis=0))  # raw views averaged
    values = np.eye(6)[p['support_labels']]
    np.testing.assert_allclose(head.cache.keys.numpy(), keys, rtol=1e-5,
                               atol=1e-6)

    # The search: a plain double loop over the same grid, first best wins.
    betas = [i * (scale[0] - 0.1) / steps[0] + 0.1 for i in range(steps[0])]
    alphas = [i * (scale[1] - 0.1) / steps[1] + 0.1 for i in range(steps[1])]
    best = (-1.0, None, None)
    for beta in betas:
        for alpha in alphas:
            logits = numpy_tip_logits(p['val'], keys, values,
                                      p['zero_shot_weights'], alpha, beta)
            acc = 100.0 * np.mean(logits.argmax(1) == p['val_labels'])
            if acc > best[0]:
                best = (acc, beta, alpha)
    result = search_head(head, (problem['val'], ), problem['val_labels'])
    assert result.accuracy == pytest.approx(best[0])
    assert result.best == pytest.approx({'beta': best[1], 'alpha': best[2]})
    assert head.searched
    assert head.hyperparameters == pytest.approx(result.best)
    assert head.fixed_hyperparameters() == {'alpha': 1.5, 'beta': 2.0}

    logits = numpy_tip_logits(p['test'], keys, values, p['zero_shot_weights'],
                              best[2], best[1])
    np.testing.assert_allclose(
        predict_logits(head, (problem['test'], ), batch_size=37).numpy(),
        logits, rtol=1e-4, atol=1e-3)
    order = np.argsort(-logits, axis=1, kind='stable')
    metrics = evaluate_head(head, (problem['test'], ), problem['test_labels'],
                            topk=(1, 3))
    for k in (1, 3):
        expected = 100.0 * np.mean(
            [y in row[:k] for row, y in zip(order, p['test_labels'])])
        assert metrics[f'top{k}'] == pytest.approx(expected)


def test_one_view_and_text_free_heads(problem):
    # (S, C) is one view; NCM needs no zero-shot weights.
    head = MODELS.build(dict(type='NCMHead', num_classes=6))
    fit_head(head, (problem['support'][0], ), problem['support_labels'])
    views = normalise(problem['support'][0].numpy())
    means = normalise(
        np.stack([views[problem['support_labels'].numpy() == c].mean(0)
                  for c in range(6)]))
    np.testing.assert_allclose(head.class_means.numpy(), means, rtol=1e-5,
                               atol=1e-6)
    assert set(evaluate_head(head, (problem['test'], ),
                             problem['test_labels'], topk=(1, 10))) == {'top1'}


def test_bad_inputs_are_named(problem):
    head = MODELS.build(dict(type='TipAdapterHead', num_classes=6))
    with pytest.raises(TypeError, match=r'bare tensor.*\(feats, \)'):
        fit_head(head, problem['support'], problem['support_labels'],
                 zero_shot_weights=problem['zero_shot_weights'])
    with pytest.raises(ValueError, match='needs zero_shot_weights'):
        fit_head(head, (problem['support'], ), problem['support_labels'])
    with pytest.raises(ValueError, match=r'labels \(5,\) do not match'):
        fit_head(head, (problem['support'], ), problem['support_labels'][:5],
                 zero_shot_weights=problem['zero_shot_weights'])
    with pytest.raises(ValueError, match='2 tensor'):
        fit_head(head, (problem['support'], problem['support']),
                 problem['support_labels'],
                 zero_shot_weights=problem['zero_shot_weights'])
    ncm = MODELS.build(dict(type='NCMHead', num_classes=6))
    with pytest.raises(TypeError, match='no zero-shot term'):
        fit_head(ncm, (problem['support'], ), problem['support_labels'],
                 zero_shot_weights=problem['zero_shot_weights'])
    fit_head(ncm, (problem['support'], ), problem['support_labels'])
    with pytest.raises(ValueError, match='no hyperparameters to search'):
        search_head(ncm, (problem['val'], ), problem['val_labels'])
    with pytest.raises(TypeError, match='bare tensor'):
        evaluate_head(ncm, problem['test'], problem['test_labels'])


def test_hand_set_hyperparameters_do_not_cancel_a_search(problem):
    head = MODELS.build(dict(type='TipAdapterHead', num_classes=6,
                             search_step=(10, 5)))
    fit_head(head, (problem['support'], ), problem['support_labels'],
             zero_shot_weights=problem['zero_shot_weights'])
    head.set_hyperparameters(alpha=0.0)
    assert not head.searched
    torch.testing.assert_close(
        predict_logits(head, (problem['test'], )),
        100.0 * torch.nn.functional.normalize(problem['test'], dim=-1)
        @ problem['zero_shot_weights'])
    search_head(head, (problem['val'], ), problem['val_labels'])
    assert head.searched and head.hyperparameters['alpha'] > 0
