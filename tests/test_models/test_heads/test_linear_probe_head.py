"""LinearProbeHead: scikit-learn's multinomial logistic regression on the
normalised views, C searched on a log grid, refits, checkpoints, and a run
of tools/test.py without a text tower."""
import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import python_tool, random_problem, run_tool, tiny_config

from tip_adapter_mm.engine import grid_search
from tip_adapter_mm.models import LinearProbeHead
from tip_adapter_mm.models.heads import linear_probe_head

GRID = (0.01, 0.1, 1.0, 10.0, 100.0)


def samples(p):
    """Every view normalised on its own, with its image's label (NumPy)."""
    views = p['support'].double().numpy()
    x = views.reshape(-1, views.shape[-1])
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x, np.tile(p['support_labels'].numpy(), len(views))


def fitted(p, classes, **kwargs):
    head = LinearProbeHead(num_classes=classes, **kwargs)
    head.fit((p['support'], ), p['support_labels'])
    return head


def objective_gradient(x, y, classes, C, weight, bias):
    """Gradient of scikit-learn's objective, sum_i CE_i + ||W||^2 / (2C),
    with respect to ``W`` ``(D, N)`` and ``b`` ``(N, )``, in NumPy."""
    logits = x @ weight + bias
    logits -= logits.max(axis=1, keepdims=True)
    prob = np.exp(logits)
    prob /= prob.sum(axis=1, keepdims=True)
    residual = prob - np.eye(classes)[y]
    return x.T @ residual + weight / C, residual.sum(axis=0)


def test_fit_is_a_stationary_point_of_the_l2_logistic_objective():
    p = random_problem(seed=0, classes=4, channels=8, shots=5, views=3)
    x, y = samples(p)
    for C in (0.05, 3.0):
        head = fitted(p, 4, C=C, solver_dtype='float64', tol=1e-10)
        weight, bias = head.weight.double().numpy(), head.bias.double().numpy()
        grad_w, grad_b = objective_gradient(x, y, 4, C, weight, bias)
        assert np.abs(grad_w).max() < 1e-4 and np.abs(grad_b).max() < 1e-4
        # Not the trivial point: the data term is far from zero there, and
        # a sign flip of the weights is no solution.
        zero_w, _ = objective_gradient(x, y, 4, C, 0 * weight, 0 * bias)
        flip_w, _ = objective_gradient(x, y, 4, C, -weight, bias)
        assert np.abs(zero_w).max() > 0.1 and np.abs(flip_w).max() > 0.1
        assert abs(bias.sum()) < 1e-6  # centred


@pytest.mark.parametrize('solver_dtype, tol', [('float64', 1e-10),
                                               ('float32', 1e-6)])
def test_matches_scikit_learn(solver_dtype, tol):
    sklearn = pytest.importorskip('sklearn.linear_model')
    p = random_problem(seed=1, classes=5, channels=12, shots=4, views=3,
                       num_test=40)
    x, y = samples(p)
    test = F.normalize(p['test'], dim=-1)
    for C in (0.1, 10.0):
        reference = sklearn.LogisticRegression(
            C=C, tol=1e-12, max_iter=10000).fit(x, y)
        head = fitted(p, 5, C=C, solver_dtype=solver_dtype, tol=tol)
        atol = 1e-5 if solver_dtype == 'float64' else 2e-3
        scale = np.abs(reference.coef_).max()
        np.testing.assert_allclose(head.weight.double().numpy(),
                                   reference.coef_.T, atol=atol * scale)
        np.testing.assert_allclose(
            head.bias.double().numpy(),
            reference.intercept_ - reference.intercept_.mean(),
            atol=atol * max(scale, 1))
        probs = torch.softmax(head((test, )).double(), dim=1).numpy()
        np.testing.assert_allclose(
            probs, reference.predict_proba(test.double().numpy()),
            atol=atol)


def test_search_fits_each_c_once_and_equals_a_loop(monkeypatch):
    p = random_problem(seed=2, classes=4, channels=10, shots=3, views=2,
                       noise=1.0, num_val=90)
    calls = []
    solve = linear_probe_head.logistic_regression

    def counting(*args, **kwargs):
        calls.append((args[3], kwargs.get('init') is not None))
        return solve(*args, **kwargs)

    monkeypatch.setattr(linear_probe_head, 'logistic_regression', counting)
    head = fitted(p, 4, C=0.5, c_grid=GRID, solver_dtype='float64',
                  tol=1e-9)
    assert calls == [(0.5, False)]  # fitted at the constructor's C
    val = F.normalize(p['val'], dim=-1)
    y = p['val_labels']
    result = grid_search(head, (val, ), y, chunk_size=7)
    # One fit per C over 13 chunks, in increasing order, each one but the
    # first (from scratch) from the kept solution just below.
    assert calls[1:] == [(0.01, False), (0.1, True), (1.0, True),
                         (10.0, True), (100.0, True)]
    assert head.hyperparameters == {'C': 0.5}  # a search changes nothing

    accuracies = []
    for C in GRID:
        head.set_hyperparameters(C=C)
        accuracies.append(
            (head((val, )).argmax(1) == y).double().mean().item() * 100)
    assert len(calls) == 6  # the kept solutions
    assert accuracies[0] != accuracies[-1]  # C matters on this problem
    assert result.best == {'C': GRID[int(np.argmax(accuracies))]}
    assert result.accuracy == pytest.approx(max(accuracies))
    np.testing.assert_allclose(result.accuracy_grid.numpy(), accuracies)

    # Applying the search predicts with the kept solution at the best C,
    # which a fresh head fitted at that C matches.
    head.apply_search(result.best)
    fresh = fitted(p, 4, C=result.best['C'], solver_dtype='float64',
                   tol=1e-9)
    np.testing.assert_allclose(head((val, )).numpy(),
                               fresh((val, )).numpy(), atol=1e-4)


def test_state_dict_round_trip_and_refit_needs_the_support():
    p = random_problem(seed=3, classes=4, channels=8, num_test=20)
    head = fitted(p, 4, c_grid=GRID)
    head.apply_search({'C': 10.0})
    fresh = LinearProbeHead(num_classes=4, c_grid=GRID)
    assert not fresh.is_fitted
    fresh.load_state_dict(head.state_dict())
    test = F.normalize(p['test'], dim=-1)
    assert torch.equal(fresh((test, )), head((test, )))
    assert fresh.searched and fresh.hyperparameters == {'C': 10.0}
    # The support samples are not in checkpoints.
    assert not any('support' in key for key in head.state_dict())
    fresh.set_hyperparameters(C=10.0)  # its own C: nothing to fit
    with pytest.raises(RuntimeError, match=r'C=1\.0 needs the support'):
        fresh.set_hyperparameters(C=1.0)
    assert fresh.hyperparameters == {'C': 10.0}
    fresh.fit((p['support'], ), p['support_labels'])
    fresh.set_hyperparameters(C=1.0)
    assert fresh.is_fitted and not fresh.searched
    with pytest.raises(RuntimeError, match='not fitted'):
        LinearProbeHead(num_classes=4)((test, ))


def test_defaults_and_errors():
    head = LinearProbeHead(num_classes=3)
    assert not head.uses_text and head.method_name == 'Linear probe'
    assert head.validation_free_hyperparameters() == {'C': 0.316}
    grid = head.search_grid()['C']
    np.testing.assert_allclose(grid.numpy(), np.logspace(-3, 3, 13))
    p = random_problem(seed=4, classes=3)
    with pytest.raises(ValueError, match=r'classes \[3\] have no few-shot'):
        fitted(p, 4)
    with pytest.raises(ValueError, match='C must be > 0'):
        LinearProbeHead(num_classes=3, C=0)
    with pytest.raises(ValueError, match='solver_dtype'):
        LinearProbeHead(num_classes=3, solver_dtype='half')
    with pytest.raises(TypeError, match='bare tensor'):
        fitted(p, 3)(F.normalize(p['test'], dim=-1))


def test_runs_through_test_py_without_a_text_tower(tiny_clip, image_folders,
                                                   tmp_path):
    from mmengine.config import Config
    from mmpretrain.registry import MODELS
    config = tiny_config(
        tmp_path / 'linear_probe.py', tiny_clip, image_folders,
        extra="model['text_encoder'] = None\n"
        "model['head'] = dict(_delete_=True, type='LinearProbeHead', "
        "num_classes=3, c_grid=(0.1, 1.0, 10.0), topk=(1, ))\n")
    model = MODELS.build(Config.fromfile(str(config)).model)
    assert model.needs_zero_shot_weights is False
    work_dir = tmp_path / 'work'
    output = run_tool(
        python_tool('test.py', str(config), '--work-dir', str(work_dir)))
    assert 'zero-shot weights' not in output
    assert ('LinearProbeHead fitted on 12 few-shot images x 3 augmented '
            'views') in output
    assert 'Hyperparameter search on val (12 images, 3 points' in output
    top1 = re.findall(r'accuracy/top1: ([0-9.]+)', output)
    assert top1 and 0.0 <= float(top1[-1]) <= 100.0
    report = json.loads(
        next(work_dir.glob('*/hyperparameter_search.json')).read_text())
    assert report['grid'] == {'C': [0.1, 1.0, 10.0]}
    assert report['best']['C'] in (0.1, 1.0, 10.0)
