"""LPPlusPlusHead against an independent NumPy run of the official update
rule, snapshot selection, checkpoints, and a run of tools/test.py."""
import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import python_tool, random_problem, run_tool, tiny_config

from tip_adapter_mm.engine import grid_search
from tip_adapter_mm.models import LPPlusPlusHead


def numpy_lp_plus_plus(views, labels, text, classes, epochs, keep,
                       alpha_every=10, momentum=0.9, accumulate=True):
    """The official LP++ loop in NumPy (float64), its classifier ``(N,
    D)`` as ``nn.Linear`` holds it: returns ``{epoch: (W (N, D), b, a)}``
    after each epoch of ``keep``."""
    v, s, d = views.shape
    x = views.reshape(v * s, d)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = np.tile(labels, v)
    m = len(x)
    onehot = np.zeros((m, classes))
    onehot[np.arange(m), y] = 1
    z = x @ text  # (M, N) text logits, unscaled
    # Centroids as class sums (of the one view per image the official
    # code has: the sum over V views is divided by V).
    w = np.stack([x[y == c].sum(axis=0) for c in range(classes)]) / v
    b = np.zeros(classes)
    alpha_tilde = np.array([z[y == c, c].mean() for c in range(classes)])
    a = np.full(classes, 250.0 * alpha_tilde.mean())
    lr_w = 4 * m / np.linalg.eigvalsh(x.T @ x).max()
    lr_a = m / (4 * (z**2).sum(axis=0).max())
    mom_w = mom_b = None
    a_grad = np.zeros(classes)
    out = {}
    for epoch in range(epochs):
        logits = x @ w.T + b + a * z
        logits = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        dlogits = (p - onehot) / m  # gradient of the mean cross-entropy
        g_w, g_b, g_a = dlogits.T @ x, dlogits.sum(0), (dlogits * z).sum(0)
        # torch.optim.SGD(momentum): buf = g, then buf = mu * buf + g.
        mom_w = g_w if mom_w is None else momentum * mom_w + g_w
        mom_b = g_b if mom_b is None else momentum * mom_b + g_b
        w, b = w - lr_w * mom_w, b - lr_w * mom_b
        a_grad = a_grad + g_a if accumulate else g_a
        if (epoch + 1) % alpha_every == 0:
            a = a - lr_a * a_grad
        if epoch + 1 in keep:
            out[epoch + 1] = (w.copy(), b.copy(), a.copy())
    return out


def fitted(p, classes, **kwargs):
    head = LPPlusPlusHead(num_classes=classes, **kwargs)
    head.set_zero_shot_weights(p['zero_shot_weights'])
    head.fit((p['support'], ), p['support_labels'])
    return head


@pytest.mark.parametrize('accumulate', [True, False])
def test_descent_matches_numpy(accumulate):
    p = random_problem(seed=0, classes=5, channels=12, shots=4, views=3,
                       num_test=30)
    head = fitted(p, 5, epochs=25, snapshot_interval=5,
                  alpha_update_interval=10, accumulate_alpha_grad=accumulate,
                  solver_dtype='float64')
    keep = [5, 10, 15, 20, 25]
    assert head.snapshot_epochs.tolist() == keep
    expected = numpy_lp_plus_plus(p['support'].double().numpy(),
                                  p['support_labels'].numpy(),
                                  p['zero_shot_weights'].double().numpy(),
                                  5, 25, keep, accumulate=accumulate)
    for i, epoch in enumerate(keep):
        w, b, a = expected[epoch]
        np.testing.assert_allclose(head.snapshot_weights[i].numpy(), w.T,
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(head.snapshot_bias[i].numpy(), b,
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(head.snapshot_alpha[i].numpy(), a,
                                   rtol=1e-5, atol=1e-5)
    # alpha moved at epochs 10 and 20 only.
    alphas = head.snapshot_alpha[:, 0].tolist()
    assert alphas[0] != alphas[1] == alphas[2] != alphas[3] == alphas[4]
    test = F.normalize(p['test'], dim=-1)
    t = test.double().numpy()
    w, b, a = expected[25]
    logits = t @ w.T + b + a * (t @ p['zero_shot_weights'].double().numpy())
    np.testing.assert_allclose(head((test, )).numpy(), logits, rtol=1e-4,
                               atol=1e-4)
    # float32 (the default) follows the same path.
    single = fitted(p, 5, epochs=25, snapshot_interval=5,
                    accumulate_alpha_grad=accumulate)
    np.testing.assert_allclose(single((test, )).numpy(), logits, rtol=1e-3,
                               atol=1e-3)


def test_snapshot_search_takes_the_latest_best_epoch():
    p = random_problem(seed=1, classes=4, channels=10, shots=3, views=2,
                       noise=1.2, num_val=80)
    head = fitted(p, 4, epochs=60, snapshot_interval=10)
    assert head.hyperparameters == {'epoch': 60.0}
    assert head.validation_free_hyperparameters() == {'epoch': 60.0}
    grid = head.search_grid()['epoch'].tolist()
    assert grid == [60.0, 50.0, 40.0, 30.0, 20.0, 10.0]  # latest first
    val = F.normalize(p['val'], dim=-1)
    y = p['val_labels']
    accuracy = {}
    for epoch in grid:
        head.set_hyperparameters(epoch=epoch)
        accuracy[epoch] = (head((val, )).argmax(1) == y).double().mean() * 100
    head.set_hyperparameters(epoch=60)
    best = max(accuracy.values())
    latest_best = max(e for e, acc in accuracy.items() if acc == best)
    assert len(set(accuracy.values())) > 1  # the epoch matters here
    for max_elements in (2**26, 500):
        result = grid_search(head, (val, ), y, chunk_size=13,
                             max_elements=max_elements)
        assert result.best == {'epoch': latest_best}
        assert result.accuracy == pytest.approx(float(best))
        np.testing.assert_allclose(result.accuracy_grid.numpy(),
                                   [float(accuracy[e]) for e in grid])
        assert head.hyperparameters == {'epoch': 60.0}
    # Ties go to the latest epoch: with all snapshots equal, the last.
    tied = fitted(p, 4, epochs=30, snapshot_interval=10)
    for name in ('snapshot_weights', 'snapshot_bias', 'snapshot_alpha'):
        getattr(tied, name).copy_(getattr(tied, name)[:1].expand_as(
            getattr(tied, name)))
    assert grid_search(tied, (val, ), y).best == {'epoch': 30.0}

    head.apply_search(result.best)
    weight, bias, alpha = head.snapshot()
    i = head.snapshot_epochs.tolist().index(latest_best)
    assert torch.equal(weight, head.snapshot_weights[i])
    with pytest.raises(ValueError, match=r'epoch 15.0 is not a kept'):
        head.set_hyperparameters(epoch=15)
    # A fixed epoch off the interval is kept too.
    odd = fitted(p, 4, epochs=30, snapshot_interval=10, epoch=7)
    assert odd.snapshot_epochs.tolist() == [7, 10, 20, 30]
    assert odd.validation_free_hyperparameters() == {'epoch': 7.0}


def test_state_dict_round_trip():
    p = random_problem(seed=2, classes=4, channels=8, num_test=20)
    head = fitted(p, 4, epochs=20, snapshot_interval=5)
    head.apply_search({'epoch': 10})
    fresh = LPPlusPlusHead(num_classes=4, epochs=20, snapshot_interval=5)
    assert not fresh.is_fitted
    fresh.load_state_dict(head.state_dict())
    test = F.normalize(p['test'], dim=-1)
    assert torch.equal(fresh((test, )), head((test, )))
    assert fresh.searched and fresh.hyperparameters == {'epoch': 10.0}
    # The snapshots came along: another epoch is a switch, no fit.
    fresh.set_hyperparameters(epoch=20)
    head.set_hyperparameters(epoch=20)
    assert torch.equal(fresh((test, )), head((test, )))
    assert not torch.equal(fresh((test, )), head.clip_logits(test))


def test_needs_text_and_every_class():
    p = random_problem(seed=3, classes=3)
    head = LPPlusPlusHead(num_classes=3)
    assert head.uses_text and head.method_name == 'LP++'
    with pytest.raises(RuntimeError, match='no zero_shot_weights'):
        head.fit((p['support'], ), p['support_labels'])
    with pytest.raises(ValueError, match=r'classes \[3\] have no few-shot'):
        fitted(dict(p, zero_shot_weights=torch.randn(24, 4)), 4)
    with pytest.raises(ValueError, match='epoch must be in'):
        LPPlusPlusHead(num_classes=3, epochs=10, epoch=11)


def test_runs_through_test_py(tiny_clip, image_folders, tmp_path):
    config = tiny_config(
        tmp_path / 'lp_plus_plus.py', tiny_clip, image_folders,
        extra="model['head'] = dict(_delete_=True, type='LPPlusPlusHead', "
        "num_classes=3, epochs=20, snapshot_interval=5, topk=(1, ))\n")
    work_dir = tmp_path / 'work'
    output = run_tool(
        python_tool('test.py', str(config), '--work-dir', str(work_dir)))
    assert 'Building zero-shot weights for 3 classes' in output
    assert ('LPPlusPlusHead fitted on 12 few-shot images x 3 augmented '
            'views') in output
    assert 'Hyperparameter search on val (12 images, 4 points' in output
    top1 = re.findall(r'accuracy/top1: ([0-9.]+)', output)
    assert top1 and 0.0 <= float(top1[-1]) <= 100.0
    report = json.loads(
        next(work_dir.glob('*/hyperparameter_search.json')).read_text())
    assert report['grid'] == {'epoch': [20.0, 15.0, 10.0, 5.0]}
