"""GDAHead against an independent NumPy computation."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CONFIGS
from mmengine.config import Config

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
                 spread=1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, channels)) * 3
    labels = np.repeat(np.arange(classes), shots)
    feats = centres[labels][None] + spread * rng.normal(
        size=(views, classes * shots, channels))
    return feats, labels


def fitted_head(feats, labels, classes, **kwargs):
    head = GDAHead(num_classes=classes, **kwargs)
    rng = np.random.default_rng(1)
    head.set_zero_shot_weights(
        F.normalize(torch.from_numpy(rng.normal(size=(feats.shape[-1],
                                                      classes))).float(),
                    dim=0))
    head.build_cache(torch.from_numpy(feats).float(), torch.from_numpy(labels))
    return head


def test_fit_matches_numpy():
    feats, labels = random_views()
    head = fitted_head(feats, labels, 4)
    weights, bias = numpy_gda(feats, labels, 4)
    np.testing.assert_allclose(head.gda_weights.numpy(), weights, rtol=1e-4,
                               atol=1e-4 * np.abs(weights).max())
    np.testing.assert_allclose(head.gda_bias.numpy(), bias, rtol=1e-4,
                               atol=1e-4 * np.abs(bias).max())


def test_logits_follow_formula():
    feats, labels = random_views(seed=2)
    head = fitted_head(feats, labels, 4, alpha=0.37)
    weights, bias = numpy_gda(feats, labels, 4)
    f = F.normalize(torch.randn(9, 6), dim=-1)
    expected = (100 * f.double().numpy() @ head.zero_shot_weights.double()
                .numpy() + 0.37 * (f.double().numpy() @ weights + bias))
    np.testing.assert_allclose(head((f, )).double().numpy(), expected,
                               rtol=1e-4, atol=1e-3)


def test_well_separated_gaussians_are_classified_almost_perfectly():
    feats, labels = random_views(seed=3, views=5, classes=5, shots=8,
                                 channels=16, spread=0.3)
    head = fitted_head(feats, labels, 5, alpha=100.0)
    # The same centres (seed 3), other noise (another shape of draw).
    test_feats, test_labels = random_views(seed=3, views=1, classes=5,
                                           shots=40, channels=16,
                                           spread=0.3)
    f = F.normalize(torch.from_numpy(test_feats[0]).float(), dim=-1)
    head.zero_shot_weights.zero_()  # the GDA term alone
    accuracy = (head((f, )).argmax(1).numpy() == test_labels).mean()
    assert accuracy >= 0.98


def test_search_over_alpha_equals_loop():
    feats, labels = random_views(seed=5, spread=3.0)
    head = fitted_head(feats, labels, 4)
    f = F.normalize(torch.randn(60, 6, generator=torch.Generator()
                                .manual_seed(0)), dim=-1)
    y = torch.randint(0, 4, (60, ), generator=torch.Generator()
                      .manual_seed(1))
    best = (-1.0, None)
    for alpha in (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0):
        head.set_hyperparameters(alpha=alpha)
        acc = (head((f, )).argmax(1) == y).double().mean().item() * 100
        if acc > best[0]:
            best = (acc, alpha)
    for max_elements in (2**26, 300):
        result = grid_search(head, f, y, chunk_size=17,
                             max_elements=max_elements)
        assert result.best == {'alpha': best[1]}
        assert result.accuracy == pytest.approx(best[0])


def test_state_dict_round_trip():
    feats, labels = random_views(seed=6)
    head = fitted_head(feats, labels, 4)
    head.set_hyperparameters(alpha=10.0)
    fresh = GDAHead(num_classes=4)
    assert not fresh.has_cache
    fresh.load_state_dict(head.state_dict())
    f = F.normalize(torch.randn(3, 6), dim=-1)
    assert torch.equal(fresh((f, )), head((f, )))
    assert fresh.hyperparameters == {'alpha': 10.0} and fresh.searched


def test_missing_class_is_named():
    feats, labels = random_views()
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
                'custom_hooks'):
        assert gda[key] == tip[key]
    assert {k: v for k, v in gda.model.items() if k != 'head'} == {
        k: v for k, v in tip.model.items() if k != 'head'}
