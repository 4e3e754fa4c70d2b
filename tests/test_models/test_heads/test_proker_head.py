"""ProKeRHead against independent NumPy solves of ProKeR's kernel ridge
regression (exact and Nystrom), its search, checkpoints, configs and a run
of tools/test.py."""
import json
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
from tip_adapter_mm.models import ProKeRHead

CLASSES = 4


def problem(seed=0, views=3, shots=6, channels=12, noise=0.9,
            view_noise=0.15):
    """Clustered random features (:func:`random_problem`) of 4 classes;
    the ``views`` augmented views of an image are that image plus noise of
    norm about ``view_noise``."""
    p = random_problem(seed=seed, classes=CLASSES, channels=channels,
                       shots=shots, views=1, noise=noise, num_val=80,
                       num_test=60)
    g = torch.Generator().manual_seed(seed + 100)
    p['support'] = p['support'] + view_noise / channels**0.5 * torch.randn(
        views, *p['support'].shape[1:], generator=g)
    return p


def numpy_samples(p):
    """Every view normalised on its own, with its image's label."""
    views = p['support'].double().numpy()
    z = views.reshape(-1, views.shape[-1])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    return z, np.tile(p['support_labels'].numpy(), len(views))


def kernel(a, b, beta):
    return np.exp(-beta * (1.0 - a @ b.T))


def numpy_proker(p, beta, lmbda, f, base=True):
    """The official closed form: (K / lmbda + I) A = Y - Z T, logits =
    f T + k(f, Z) A."""
    z, y = numpy_samples(p)
    text = p['zero_shot_weights'].double().numpy() if base else np.zeros(
        (z.shape[1], CLASSES))
    residual = np.eye(CLASSES)[y] - z @ text
    dual = np.linalg.solve(
        kernel(z, z, beta) / lmbda + np.eye(len(z)), residual)
    return f @ text + kernel(f, z, beta) @ dual


def numpy_nystrom(p, beta, lmbda, f, landmarks, jitter):
    """Subset of regressors on the landmarks L: coef = lmbda (k(L, Z)
    k(Z, L) + lmbda (k(L, L) + jitter I))^-1 k(L, Z) (Y - Z T)."""
    z, y = numpy_samples(p)
    text = p['zero_shot_weights'].double().numpy()
    residual = np.eye(CLASSES)[y] - z @ text
    k_lz = kernel(landmarks, z, beta)
    k_ll = kernel(landmarks, landmarks, beta) + jitter * np.eye(
        len(landmarks))
    coef = lmbda * np.linalg.solve(k_lz @ k_lz.T + lmbda * k_ll,
                                   k_lz @ residual)
    return f @ text + kernel(f, landmarks, beta) @ coef


def fitted(p, base=True, **kwargs):
    head = ProKeRHead(num_classes=CLASSES, zero_shot_base=base, **kwargs)
    if base:
        head.set_zero_shot_weights(p['zero_shot_weights'])
    head.fit((p['support'], ), p['support_labels'])
    return head


def normed(x):
    return F.normalize(x, dim=-1)


@pytest.mark.parametrize('beta,lmbda', [(1.7, 0.1), (0.5, 0.05),
                                        (6.0, 3.0)])
def test_exact_solve_matches_numpy(beta, lmbda):
    p = problem(seed=1)
    head = fitted(p, beta=beta, lmbda=lmbda)
    assert head.uses_exact_solve and head.num_samples == 3 * 4 * 6
    f = normed(p['test'])
    expected = numpy_proker(p, beta, lmbda, f.double().numpy())
    got = head((f, )).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # The kernel term matters (a sign flip of it would be caught).
    base = f.double().numpy() @ p['zero_shot_weights'].double().numpy()
    assert np.abs(expected - base).max() > 0.05
    # Chunked kernels give the same logits.
    head.max_elements = 7
    np.testing.assert_allclose(head((f, )).double().numpy(), expected,
                               rtol=1e-5, atol=1e-5)


def test_nystrom_matches_numpy_and_stays_close_to_exact():
    p = problem(seed=2, views=4)
    f = normed(p['test'])
    exact = fitted(p, beta=2.0, lmbda=0.2)
    approx = fitted(p, beta=2.0, lmbda=0.2, exact_max_samples=0,
                    max_elements=50)
    assert exact.uses_exact_solve and not approx.uses_exact_solve
    # Landmarks: the view-averaged images.
    views = normed(p['support'].double())
    landmarks = normed(views.mean(0)).numpy()
    np.testing.assert_allclose(approx.centres.double().numpy(), landmarks,
                               atol=1e-6)
    got = approx((f, )).double().numpy()
    np.testing.assert_allclose(
        got,
        numpy_nystrom(p, 2.0, 0.2, f.double().numpy(), landmarks, 1e-6),
        rtol=1e-4, atol=1e-4)
    reference = exact((f, )).double().numpy()
    kernel_term = np.abs(reference - f.double().numpy() @ p[
        'zero_shot_weights'].double().numpy()).max()
    assert np.abs(got - reference).max() < 0.2 * kernel_term
    assert (got.argmax(1) == reference.argmax(1)).mean() >= 0.95


def test_nystrom_on_the_views_themselves_is_the_exact_solve():
    # One view per image: the landmarks are the views, the approximation
    # is exact (but for the jitter); adding every view as a landmark too.
    p = problem(seed=3, views=1)
    f = normed(p['test'])
    reference = fitted(p, beta=1.5, lmbda=0.3)((f, ))
    one_view = fitted(p, beta=1.5, lmbda=0.3, exact_max_samples=0,
                      jitter=1e-9)
    torch.testing.assert_close(one_view((f, )), reference, rtol=1e-4,
                               atol=1e-4)
    p = problem(seed=3, views=3)
    reference = fitted(p, beta=1.5, lmbda=0.3)((f, ))
    every = fitted(p, beta=1.5, lmbda=0.3, exact_max_samples=0,
                   num_landmarks=10**6, jitter=1e-9)
    assert len(every.centres) == 4 * 6 + 3 * 4 * 6
    torch.testing.assert_close(every((f, )), reference, rtol=1e-3,
                               atol=1e-3)
    subset = fitted(p, exact_max_samples=0, num_landmarks=10,
                    landmark_seed=3)
    again = fitted(p, exact_max_samples=0, num_landmarks=10,
                   landmark_seed=3)
    assert len(subset.centres) == 10
    assert torch.equal(subset.centres, again.centres)


def test_zero_base_is_kernel_ridge_regression_of_the_labels():
    p = problem(seed=4, noise=0.3)
    head = fitted(p, base=False, beta=3.0, lmbda=0.5)
    assert not head.uses_text and not head.has_zero_shot_weights
    f = normed(p['test'])
    expected = numpy_proker(p, 3.0, 0.5, f.double().numpy(), base=False)
    np.testing.assert_allclose(head((f, )).double().numpy(), expected,
                               rtol=1e-5, atol=1e-5)
    accuracy = (head((f, )).argmax(1) == p['test_labels']).double().mean()
    assert accuracy > 0.6  # chance is 0.25
    # With the base, zero-shot weights are required before fit.
    with pytest.raises(RuntimeError, match='zero_shot_base=False'):
        ProKeRHead(num_classes=CLASSES).fit((p['support'], ),
                                            p['support_labels'])
    assert ProKeRHead(num_classes=CLASSES).uses_text


def loop_counts(head, f, labels):
    """Hits at every grid point by setting the values and predicting."""
    grid = head.search_grid()
    counts = torch.zeros(len(grid['beta']), len(grid['lmbda']),
                         dtype=torch.int64)
    for i, beta in enumerate(grid['beta'].tolist()):
        for j, lmbda in enumerate(grid['lmbda'].tolist()):
            head.set_hyperparameters(beta=beta, lmbda=lmbda)
            counts[i, j] = (head((f, )).argmax(1) == labels).sum()
    return counts


@pytest.mark.parametrize('lmbda_steps,exact', [(3, True), (41, True),
                                               (3, False)])
def test_search_counts_equal_a_loop_over_the_grid(lmbda_steps, exact):
    """Cholesky per lambda (3 steps) and one eigendecomposition per beta
    (41 steps), exact and Nystrom; the grid solved once per search or per
    chunk of validation features (small max_elements)."""
    p = problem(seed=5, noise=1.2)
    kwargs = dict(beta_range=(0.5, 6.0, 3),
                  lmbda_range=(0.002, 2.0, lmbda_steps),
                  exact_max_samples=10**6 if exact else 0)
    head = fitted(p, beta=1.0, lmbda=0.05, **kwargs)
    f, y = normed(p['val']), p['val_labels']
    expected = loop_counts(fitted(p, **kwargs), f, y)
    assert expected.max() > expected.min()  # the grid matters here
    assert torch.equal(head.count_correct((f, ), y, {}), expected)
    before = head((f, ))
    for max_elements in (2**26, 40):
        result = grid_search(head, (f, ), y, chunk_size=30,
                             max_elements=max_elements)
        assert torch.equal(
            torch.round(result.accuracy_grid * len(y) / 100).long(),
            expected)
        flat = int(torch.argmax(expected.flatten()))
        i, j = divmod(flat, lmbda_steps)
        grid = head.search_grid()
        assert result.best == {'beta': float(grid['beta'][i]),
                               'lmbda': float(grid['lmbda'][j])}
        # The head is not changed by the search.
        assert head.hyperparameters == {'beta': 1.0, 'lmbda': 0.05}
        assert torch.equal(head((f, )), before)
    head.apply_search(result.best)
    assert head.searched
    fresh = fitted(p, beta=result.best['beta'], lmbda=result.best['lmbda'],
                   **kwargs)
    torch.testing.assert_close(head((f, )), fresh((f, )))


def test_grid_and_validation_free_values():
    head = ProKeRHead(num_classes=CLASSES, beta=2.0, lmbda=0.3,
                      beta_range=(0.5, 3.0, 6), lmbda_range=(0.001, 1.0, 4))
    grid = head.search_grid()
    assert list(grid) == ['beta', 'lmbda']
    np.testing.assert_allclose(grid['beta'], np.linspace(0.5, 3.0, 6))
    np.testing.assert_allclose(grid['lmbda'], np.linspace(0.001, 1.0, 4))
    # Before fit: the constructor's values.
    assert head.validation_free_hyperparameters() == {'beta': 2.0,
                                                      'lmbda': 0.3}
    # After: the official per-shot table (RN50, from ImageNet), nearest
    # number of shots in log scale.
    for shots, expected in ((1, (3.0, 0.05)), (2, (2.6, 0.05)),
                            (3, (1.5, 0.05)), (4, (1.5, 0.05)),
                            (8, (1.66, 0.07)), (16, (1.7, 0.1)),
                            (32, (1.7, 0.1))):
        p = problem(seed=6, views=1, shots=shots)
        head = fitted(p, beta=2.0, lmbda=0.3)
        assert head.num_shots == shots
        assert head.validation_free_hyperparameters() == dict(
            beta=expected[0], lmbda=expected[1])
        assert head.fixed_hyperparameters() == {'beta': 2.0, 'lmbda': 0.3}
    own = fitted(problem(seed=6, views=1, shots=5),
                 validation_free={2: (9.0, 0.9), 8: (4.0, 0.4)})
    assert own.validation_free_hyperparameters() == {'beta': 4.0,
                                                     'lmbda': 0.4}
    with pytest.raises(ValueError, match='lmbda_range'):
        ProKeRHead(num_classes=2, lmbda_range=(0.0, 1.0, 3))
    with pytest.raises(ValueError, match='beta_range'):
        ProKeRHead(num_classes=2, beta_range=(1.0, 2.0))
    with pytest.raises(ValueError, match='lmbda must be > 0'):
        head.set_hyperparameters(lmbda=0.0)


@pytest.mark.parametrize('exact', [True, False])
def test_state_dict_round_trip(exact):
    p = problem(seed=7)
    kwargs = dict(exact_max_samples=10**6 if exact else 0)
    head = fitted(p, **kwargs)
    head.apply_search({'beta': 2.5, 'lmbda': 0.4})
    fresh = ProKeRHead(num_classes=CLASSES, **kwargs)
    assert not fresh.is_fitted
    fresh.load_state_dict(head.state_dict())
    f = normed(p['test'])
    assert fresh.is_fitted and fresh.searched
    assert torch.equal(fresh((f, )), head((f, )))
    assert fresh.hyperparameters == {'beta': 2.5, 'lmbda': 0.4}
    # The support views came along: a loaded head solves again.
    fresh.set_hyperparameters(beta=1.0, lmbda=0.1)
    head.set_hyperparameters(beta=1.0, lmbda=0.1)
    assert torch.equal(fresh((f, )), head((f, )))
    with pytest.raises(TypeError, match='bare tensor'):
        head(f)


# The official code's grids (configs/RN50/configs_proker/<dataset>.yaml of
# github.com/ybendou/ProKeR), written out here: (beta, lmbda) as
# (start, end, steps) of a linspace.
OFFICIAL_GRIDS = {
    'caltech101': ((0.5, 3, 20), (0.001, 1, 10)),
    'dtd': ((0.1, 10, 20), (0.001, 10, 100)),
    'eurosat': ((0.5, 3, 20), (0.001, 1, 100)),
    'fgvc_aircraft': ((0.5, 3, 20), (0.001, 1, 10)),
    'flowers102': ((0.1, 10, 20), (0.001, 10, 100)),
    'food101': ((0.5, 3, 20), (0.001, 1, 10)),
    'imagenet': ((1.5, 3, 10), (0.05, 0.25, 10)),
    'oxford_pets': ((0.01, 5, 40), (0.01, 0.3, 20)),
    'stanford_cars': ((0.1, 10, 5), (0.01, 1, 5)),
    'sun397': ((0.1, 10, 20), (0.01, 10, 10)),
    'ucf101': ((0.5, 3, 20), (0.001, 1, 10)),
}


@pytest.mark.parametrize('dataset', sorted(OFFICIAL_GRIDS))
def test_configs_carry_the_official_grids(dataset):
    cfg = Config.fromfile(str(CONFIGS / f'proker_{dataset}_16shot.py'))
    tip = Config.fromfile(str(CONFIGS / f'tip_{dataset}_16shot.py'))
    head = cfg.model.head
    assert head.type == 'ProKeRHead'
    assert head.num_classes == tip.model.head.num_classes
    beta, lmbda = OFFICIAL_GRIDS[dataset]
    assert tuple(head.beta_range) == beta
    assert tuple(head.lmbda_range) == lmbda
    assert (head.beta, head.lmbda) == (1.7, 0.1)  # 16 shots, no validation
    assert cfg.get('train_cfg') is None
    for key in ('fewshot_dataloader', 'val_dataloader', 'test_dataloader',
                'custom_hooks', 'few_shot_cfg', 'val_cfg', 'test_cfg'):
        assert cfg[key] == tip[key], key
    assert {k: v for k, v in cfg.model.items() if k != 'head'} == {
        k: v for k, v in tip.model.items() if k != 'head'}


def test_text_free_custom_config_builds_without_a_text_tower():
    cfg = Config.fromfile(
        str(CONFIGS / 'custom/proker_my_dataset_16shot_resnet50.py'))
    assert cfg.model.get('text_encoder') is None
    cfg.model.backbone.init_cfg = None  # no download
    model = MODELS.build(cfg.model)
    assert isinstance(model.head, ProKeRHead)
    assert not model.head.uses_text and not model.needs_zero_shot_weights


def test_test_py_fits_searches_and_reports(tiny_clip, image_folders,
                                           tmp_path):
    config = tiny_config(
        tmp_path / 'proker.py', tiny_clip, image_folders,
        extra="model['head'] = dict(_delete_=True, type='ProKeRHead', "
        "num_classes=3, beta_range=(0.5, 3.0, 4), "
        "lmbda_range=(0.01, 1.0, 3), topk=(1, ))\n")
    work_dir = tmp_path / 'work'
    output = run_tool(
        python_tool('test.py', str(config), '--work-dir', str(work_dir)))
    assert 'Building zero-shot weights for 3 classes' in output
    assert ('ProKeRHead fitted on 12 few-shot images x 3 augmented views'
            in output)
    assert 'Hyperparameter search on val (12 images, 12 points' in output
    top1 = re.findall(r'accuracy/top1: ([0-9.]+)', output)
    assert top1 and 0.0 <= float(top1[-1]) <= 100.0
    report = json.loads(
        next(work_dir.glob('*/hyperparameter_search.json')).read_text())
    assert report['grid']['beta'] == pytest.approx([0.5, 4 / 3, 13 / 6, 3])
    assert report['grid']['lmbda'] == pytest.approx([0.01, 0.505, 1.0])


def test_search_solves_each_beta_once_whatever_the_chunk_size(monkeypatch):
    """The search gives ProKeR the whole validation split (chunked=False):
    each beta's kernel system is built once per search even when its
    coefficients exceed max_elements and the hook's chunks are small."""
    p = problem(seed=5, noise=1.2)
    head = fitted(p, beta_range=(0.5, 6.0, 3), lmbda_range=(0.002, 2.0, 3),
                  exact_max_samples=0)
    f, y = normed(p['val']), p['val_labels']
    built = []
    original = ProKeRHead.kernel_system

    def counting(self, beta, max_elements=None):
        built.append(beta)
        return original(self, beta, max_elements)

    monkeypatch.setattr(ProKeRHead, 'kernel_system', counting)
    result = grid_search(head, (f, ), y, chunk_size=7, max_elements=40)
    assert len(built) == 3  # one per beta, not one per chunk of 7
    assert result.num_samples == len(y)
    assert torch.equal(
        torch.round(result.accuracy_grid * len(y) / 100).long(),
        loop_counts(fitted(p, beta_range=(0.5, 6.0, 3),
                           lmbda_range=(0.002, 2.0, 3), exact_max_samples=0),
                    f, y))
