"""GDAHead against an independent NumPy computation."""
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CONFIGS, python_tool, random_problem, run_tool, \
    tiny_config
from mmengine.config import Config

from mmpretrain.registry import MODELS
from tip_adapter_mm.engine import grid_search
from tip_adapter_mm.models import GDAHead


def numpy_gda(views: np.ndarray, labels: np.ndarray, classes: int):
    """The closed form, written out with NumPy in float64."""
    v, s, c = views.shape
    x = views.reshape(v * s, c)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = np.tile(labels, v)
    mus = np.stack([x[y == k].mean(axis=0) for k in range(classes)])
    centred = x - mus[y]
    cov = np.cov(centred.T)  # unbiased, like torch.cov
    precision = c * np.linalg.pinv((len(x) - 1) * cov +
                                   np.trace(cov) * np.eye(c))
    priors = np.bincount(y, minlength=classes) / len(y)
    weights = precision @ mus.T
    bias = np.log(priors) - 0.5 * np.einsum('nc,cd,nd->n', mus, precision,
                                            mus)
    return weights, bias


def random_views(seed=0, views=3, classes=4, shots=5, channels=6,
                 noise=0.3, **kwargs):
    """Raw views ``(V, S, C)`` and labels as NumPy arrays, and the rest of
    :func:`random_problem` (text weights, held-out features)."""
    p = random_problem(seed=seed, classes=classes, channels=channels,
                       shots=shots, views=views, noise=noise, **kwargs)
    return p['support'].numpy(), p['support_labels'].numpy(), p


def fitted_head(feats, labels, classes, weights=None, **kwargs):
    head = GDAHead(num_classes=classes, **kwargs)
    if weights is None:
        rng = np.random.default_rng(1)
        weights = F.normalize(torch.from_numpy(
            rng.normal(size=(feats.shape[-1], classes))).float(), dim=0)
    head.set_zero_shot_weights(weights)
    head.fit((torch.from_numpy(feats).float(), ), torch.from_numpy(labels))
    return head


def test_fit_matches_numpy():
    feats, labels, _ = random_views()
    head = fitted_head(feats, labels, 4)
    assert head.is_fitted
    weights, bias = numpy_gda(feats, labels, 4)
    np.testing.assert_allclose(head.gda_weights.numpy(), weights, rtol=1e-4,
                               atol=1e-4 * np.abs(weights).max())
    np.testing.assert_allclose(head.gda_bias.numpy(), bias, rtol=1e-4,
                               atol=1e-4 * np.abs(bias).max())


def test_logits_follow_formula():
    feats, labels, p = random_views(seed=2, num_test=9)
    head = fitted_head(feats, labels, 4, alpha=0.37)
    weights, bias = numpy_gda(feats, labels, 4)
    f = F.normalize(p['test'], dim=-1)
    expected = (100 * f.double().numpy() @ head.zero_shot_weights.double()
                .numpy() + 0.37 * (f.double().numpy() @ weights + bias))
    np.testing.assert_allclose(head((f, )).double().numpy(), expected,
                               rtol=1e-4, atol=1e-3)
    # gda_logits takes the tensor of the one encoder.
    np.testing.assert_allclose(head.gda_logits(f).double().numpy(),
                               f.double().numpy() @ weights + bias,
                               rtol=1e-4, atol=1e-4)


def test_well_separated_gaussians_are_classified_almost_perfectly():
    # Noise of norm ~0.12 around unit-norm centres: well separated.
    feats, labels, p = random_views(seed=3, views=5, classes=5, shots=8,
                                    channels=16, noise=0.03, num_test=200)
    head = fitted_head(feats, labels, 5, alpha=100.0)
    # The same centres, other draws.
    f = F.normalize(p['test'], dim=-1)
    head.zero_shot_weights.zero_()  # the GDA term alone
    accuracy = (head((f, )).argmax(1) == p['test_labels']).double().mean()
    assert accuracy >= 0.98


def test_search_over_alpha_equals_loop():
    feats, labels, p = random_views(seed=5, noise=1.0, num_val=60)
    head = fitted_head(feats, labels, 4)
    f = F.normalize(p['val'], dim=-1)
    y = p['val_labels']
    best = (-1.0, None)
    for alpha in (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0):
        head.set_hyperparameters(alpha=alpha)
        acc = (head((f, )).argmax(1) == y).double().mean().item() * 100
        if acc > best[0]:
            best = (acc, alpha)
    assert best[1] != 1e-4  # the GDA term matters on this data
    head.set_hyperparameters(alpha=1.0)
    for max_elements in (2**26, 300):
        result = grid_search(head, (f, ), y, chunk_size=17,
                             max_elements=max_elements)
        assert result.best == {'alpha': best[1]}
        assert result.accuracy == pytest.approx(best[0])
        assert head.hyperparameters == {'alpha': 1.0}  # not applied


@pytest.mark.parametrize('searched', [True, False])
def test_state_dict_round_trip(searched):
    feats, labels, p = random_views(seed=6, num_test=3)
    head = fitted_head(feats, labels, 4)
    if searched:
        head.apply_search({'alpha': 10.0})
    else:
        head.set_hyperparameters(alpha=10.0)
    fresh = GDAHead(num_classes=4)
    assert not fresh.is_fitted
    fresh.load_state_dict(head.state_dict())
    assert fresh.is_fitted
    f = F.normalize(p['test'], dim=-1)
    assert torch.equal(fresh((f, )), head((f, )))
    assert fresh.hyperparameters == {'alpha': 10.0}
    assert fresh.searched == searched


def test_no_cache_and_old_checkpoints_with_an_empty_one_load():
    """GDA has no cache any more; checkpoints of the version that kept an
    empty one in GDA heads still load, strictly."""
    feats, labels, p = random_views(seed=7, num_test=5)
    head = fitted_head(feats, labels, 4)
    head.apply_search({'alpha': 0.1})
    assert not hasattr(head, 'cache')
    assert not any('cache' in k for k in head.state_dict())
    old = dict(head.state_dict(), cache_keys=torch.zeros(0, 0),
               cache_values=torch.zeros(0, 4))
    fresh = GDAHead(num_classes=4)
    fresh.load_state_dict(old, strict=True)
    f = F.normalize(p['test'], dim=-1)
    assert torch.equal(fresh((f, )), head((f, )))
    assert fresh.searched and fresh.hyperparameters == {'alpha': 0.1}
    assert set(fresh.state_dict()) == set(head.state_dict())


def test_features_contract_and_fixed_hyperparameters():
    feats, labels, p = random_views(seed=8, num_test=5)
    head = fitted_head(feats, labels, 4, alpha=0.5)
    f = F.normalize(p['test'], dim=-1)
    with pytest.raises(TypeError, match=r'GDAHead.*bare tensor.*\(feats, \)'):
        head(f)
    with pytest.raises(TypeError, match='GDAHead.fit.*bare tensor'):
        head.fit(torch.from_numpy(feats), torch.from_numpy(labels))
    head.apply_search({'alpha': 100.0})
    assert head.fixed_hyperparameters() == {'alpha': 0.5}
    assert list(head.search_grid()) == ['alpha']
    assert head.search_grid()['alpha'].tolist() == [
        1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0]


def test_missing_class_is_named():
    feats, labels, _ = random_views()
    with pytest.raises(ValueError, match=r'classes \[4\] have no'):
        fitted_head(feats, labels, 5)


def test_config_is_tip_adapter_with_one_line_changed():
    gda = Config.fromfile(str(CONFIGS / 'gda_imagenet_16shot.py'))
    tip = Config.fromfile(str(CONFIGS / 'tip_imagenet_16shot.py'))
    assert gda.model.head.type == 'GDAHead'
    assert gda.model.head.num_classes == 1000
    assert set(gda.model.head) == {'type', 'num_classes', 'alpha',
                                   'alpha_grid', 'topk'}
    for key in ('fewshot_dataloader', 'val_dataloader', 'test_dataloader',
                'custom_hooks', 'runner_type', 'few_shot_cfg', 'val_cfg',
                'test_cfg', 'val_evaluator', 'test_evaluator'):
        assert gda[key] == tip[key]
    assert {k: v for k, v in gda.model.items() if k != 'head'} == {
        k: v for k, v in tip.model.items() if k != 'head'}


def test_counts_refuse_a_bare_tensor():
    """A bare (M, C) tensor is not silently read as its first row."""
    from tip_adapter_mm.models import (APEHead, CacheOnlyHead,
                                       DualCacheTipAdapterHead,
                                       TipAdapterHead)
    p = random_problem(seed=7, classes=7, num_val=7)
    feats = torch.nn.functional.normalize(p['val'], dim=-1)
    for head in (GDAHead(num_classes=7), TipAdapterHead(num_classes=7),
                 APEHead(num_classes=7, feat_num=8), CacheOnlyHead(
                     num_classes=7), DualCacheTipAdapterHead(num_classes=7)):
        with pytest.raises(TypeError, match='bare tensor'):
            head.count_correct(feats, p['val_labels'], {})
    with pytest.raises(ValueError, match='set model.second_backbone'):
        DualCacheTipAdapterHead(num_classes=7).count_correct(
            (feats, ), p['val_labels'], {})


def test_without_the_zero_shot_term_logits_are_the_gda_scores():
    feats, labels, p = random_views(seed=9, num_test=7)
    head = GDAHead(num_classes=4, alpha=0.37, zero_shot_term=False)
    assert not head.uses_text and GDAHead(num_classes=4).uses_text
    # No zero-shot weights are needed, neither to fit nor to predict.
    head.fit((torch.from_numpy(feats).float(), ), torch.from_numpy(labels))
    assert not head.has_zero_shot_weights
    weights, bias = numpy_gda(feats, labels, 4)
    f = F.normalize(p['test'], dim=-1)
    np.testing.assert_allclose(head((f, )).double().numpy(),
                               f.double().numpy() @ weights + bias,
                               rtol=1e-4, atol=1e-4)
    # alpha would only scale the logits: nothing to search.
    assert head.search_grid() == {}
    assert head.search_stages() == []
    with pytest.raises(RuntimeError, match='nothing to search'):
        head.count_correct((f, ), p['test_labels'], {})
    fresh = GDAHead(num_classes=4, zero_shot_term=False)
    fresh.load_state_dict(head.state_dict())
    assert torch.equal(fresh((f, )), head((f, )))


def test_text_free_gda_runs_through_the_classifier_without_text_encoder(
        tiny_clip, image_folders, tmp_path):
    config = tiny_config(
        tmp_path / 'gda_text_free.py', tiny_clip, image_folders,
        extra="model['text_encoder'] = None\n"
        "model['head'] = dict(_delete_=True, type='GDAHead', num_classes=3, "
        "zero_shot_term=False, topk=(1, ))\n")
    cfg = Config.fromfile(str(config))
    assert cfg.model.text_encoder is None
    assert MODELS.build(cfg.model).needs_zero_shot_weights is False
    # With the zero-shot term, the same model needs a text tower.
    cfg.model.head.zero_shot_term = True
    assert MODELS.build(cfg.model).needs_zero_shot_weights is True
    output = run_tool(
        python_tool('test.py', str(config), '--work-dir',
                    str(tmp_path / 'work')))
    assert 'zero-shot weights' not in output
    assert 'GDAHead fitted on 12 few-shot images x 3 augmented views' \
        in output
    assert 'Hyperparameter search' not in output
    top1 = re.findall(r'accuracy/top1: ([0-9.]+)', output)
    assert top1 and 0.0 <= float(top1[-1]) <= 100.0
