"""KeyValueCache's search counts: per-class sums of the affinities when the
values are one-hot (equal and unequal classes), the matmul otherwise,
chunked to any memory bound, against a NumPy loop over every point."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tip_adapter_mm.models.heads.cache_model import (ClassSums,
                                                     KeyValueCache,
                                                     has_one_entry_per_row)


def numpy_counts(feats, keys, values, labels, betas, alphas, base=None):
    """Correct top-1 counts of ``base + alpha * exp(-beta (1 - f k^T)) L``
    at every (beta, alpha), one point at a time, in float64 NumPy (first
    maximum wins, as ``np.argmax``)."""
    f, k, v = (np.asarray(t, dtype=np.float64) for t in (feats, keys, values))
    y = np.asarray(labels)
    base = 0.0 if base is None else np.asarray(base, dtype=np.float64)
    out = np.zeros((len(betas), len(alphas)), dtype=np.int64)
    for i, beta in enumerate(np.asarray(betas, dtype=np.float64)):
        cache = np.exp(-beta * (1 - f @ k.T)) @ v
        for j, alpha in enumerate(np.asarray(alphas, dtype=np.float64)):
            out[i, j] = int(((base + alpha * cache).argmax(1) == y).sum())
    return torch.from_numpy(out)


def problem(seed=0, classes=6, shots=4, num=50, dim=12, unequal=False):
    """Shuffled keys of ``shots`` per class (class 0 with one fewer when
    ``unequal``), one-hot values, features near the class centres, labels
    and zero-shot-like base logits."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(classes, dim, generator=g), dim=-1)
    key_labels = torch.arange(classes).repeat(shots)
    if unequal:
        key_labels = key_labels[1:]  # class 0 loses a key
    key_labels = key_labels[torch.randperm(len(key_labels), generator=g)]
    keys = F.normalize(centres[key_labels] + 0.9 * torch.randn(
        len(key_labels), dim, generator=g) / dim**0.5 * 3, dim=-1)
    labels = torch.randint(classes, (num, ), generator=g)
    feats = F.normalize(centres[labels] + 3 * torch.randn(
        num, dim, generator=g) / dim**0.5, dim=-1)
    base = 2 * feats @ F.normalize(
        centres + torch.randn(classes, dim, generator=g), dim=-1).t()
    values = F.one_hot(key_labels, classes).float()
    return feats, keys, values, labels, base


def cache_of(keys, values):
    cache = KeyValueCache(values.shape[1])
    cache.set(keys, values)
    return cache


BETAS = torch.tensor([0.1, 1.0, 2.5, 5.0, 9.0])
ALPHAS = torch.tensor([0.0, 0.2, 0.7, 1.5, 3.0, 6.0])


@pytest.mark.parametrize('unequal', [False, True])
@pytest.mark.parametrize('with_base', [True, False])
def test_one_hot_counts_equal_numpy_loop(unequal, with_base):
    feats, keys, values, labels, base = problem(unequal=unequal)
    base = base if with_base else None
    cache = cache_of(keys, values)
    expected = numpy_counts(feats, keys, values, labels, BETAS, ALPHAS,
                            base)
    counts = cache.count_correct(feats, labels, BETAS, ALPHAS, base)
    assert counts.dtype == torch.int64 and counts.shape == (5, 6)
    assert torch.equal(counts, expected)
    assert len(set(expected.flatten().tolist())) > 3  # the grid matters
    sums = ClassSums(values)
    assert sums.mode == ('unequal' if unequal else 'equal')


@pytest.mark.parametrize('max_elements', [1, 7, 60, 500, 2**26])
def test_any_memory_bound_gives_the_same_counts(max_elements):
    """Chunked over samples, betas and alphas down to one at a time."""
    feats, keys, values, labels, base = problem(seed=1)
    cache = cache_of(keys, values)
    expected = numpy_counts(feats, keys, values, labels, BETAS, ALPHAS, base)
    counts = cache.count_correct(feats, labels, BETAS, ALPHAS, base,
                                 max_elements=max_elements)
    assert torch.equal(counts, expected)


def test_general_values_keep_the_matmul():
    feats, keys, values, labels, base = problem(seed=2)
    soft = values * torch.linspace(0.5, 1.5, len(values))[:, None]
    soft[0, 1] = 0.25  # not one-hot
    assert not has_one_entry_per_row(soft)
    assert ClassSums(soft).mode == 'matmul'
    cache = cache_of(keys, values)
    expected = numpy_counts(feats, keys, soft, labels, BETAS, ALPHAS, base)
    counts = cache.count_correct(feats, labels, BETAS, ALPHAS, base,
                                 values=soft, max_elements=97)
    assert torch.equal(counts, expected)


@pytest.mark.parametrize('unequal', [False, True])
def test_class_sums_equal_the_product_with_the_values(unequal):
    _, keys, values, _, _ = problem(seed=3, unequal=unequal)
    sums = ClassSums(values)
    x = torch.rand(3, 5, len(values), dtype=torch.float64)
    expected = x.numpy() @ values.double().numpy()
    got = sums(sums.arrange(x))
    assert got.shape == (3, 5, values.shape[1])
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    if not unequal:
        # shot-major: column k * N + n holds class n's k-th key
        arranged_labels = sums.arrange(values.argmax(1)[None])[0]
        classes = values.shape[1]
        assert torch.equal(arranged_labels,
                           torch.arange(classes).repeat(len(values)
                                                        // classes))


@pytest.mark.parametrize('unequal', [False, True])
def test_one_hot_rows_scaled_per_key_are_summed_with_their_weights(unequal):
    """APE's refined values: each key's one-hot row times its own weight."""
    feats, keys, values, labels, base = problem(seed=4, unequal=unequal)
    weights = torch.linspace(0.2, 3.0, len(values))
    scaled = values * weights[:, None]
    sums = ClassSums(scaled)
    assert sums.mode == ('unequal' if unequal else 'equal')
    x = torch.rand(2, 3, len(values), dtype=torch.float64)
    np.testing.assert_allclose(
        sums(sums.arrange(x)).numpy(),
        x.numpy() @ scaled.double().numpy(), rtol=1e-12)
    cache = cache_of(keys, values)
    expected = numpy_counts(feats, keys, scaled, labels, BETAS, ALPHAS, base)
    counts = cache.count_correct(feats, labels, BETAS, ALPHAS, base,
                                 values=scaled, max_elements=113)
    assert torch.equal(counts, expected)
    # the weights matter: the unweighted sums count differently
    assert not torch.equal(
        expected, numpy_counts(feats, keys, values, labels, BETAS, ALPHAS,
                               base))


def test_has_one_entry_per_row():
    assert has_one_entry_per_row(torch.eye(3))
    assert has_one_entry_per_row(torch.eye(4)[[0, 0, 2]])
    assert has_one_entry_per_row(torch.eye(3) * 2)
    assert not has_one_entry_per_row(torch.zeros(2, 3))  # a row without
    assert not has_one_entry_per_row(torch.ones(2, 2))
    assert not has_one_entry_per_row(torch.zeros(0, 3))
