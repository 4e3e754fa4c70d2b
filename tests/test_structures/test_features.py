"""The features contract: one tensor per visual encoder, always a tuple
(check_features, EncodedFeatures, normalized)."""
import numpy as np
import pytest
import torch

from tip_adapter_mm.structures import (EncodedFeatures, check_features,
                                       normalized)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# -- check_features ----------------------------------------------------------
def test_check_features_accepts_a_tuple_or_list_and_returns_a_tuple():
    a, b = randn(4, 3), randn(4, 7, seed=1)  # widths may differ
    for feats in ((a, ), [a]):
        out = check_features(feats, 1, 'Owner')
        assert isinstance(out, tuple) and len(out) == 1 and out[0] is a
    out = check_features([a, b], 2, 'Owner')
    assert isinstance(out, tuple) and out[0] is a and out[1] is b


def test_check_features_refuses_a_bare_tensor():
    with pytest.raises(TypeError) as err:
        check_features(randn(4, 3), 1, 'TipAdapterHead')
    message = str(err.value)
    assert 'TipAdapterHead' in message
    assert 'bare tensor of shape (4, 3)' in message
    assert '(feats, )' in message
    with pytest.raises(TypeError, match=r'\(feats, \)'):
        check_features(randn(2, 4, 3), 1, 'head.fit', dims=3)
    # Not a sequence of tensors either
    with pytest.raises(TypeError, match='got dict'):
        check_features(dict(f=randn(4, 3)), 1, 'Owner')
    with pytest.raises(TypeError, match='got list'):
        check_features([np.zeros((4, 3))], 1, 'Owner')


def test_check_features_wrong_number_of_tensors_names_both_counts():
    f = randn(4, 3)
    with pytest.raises(ValueError,
                       match=r'Dual takes the features of 2 visual '
                       r'encoder\(s\), got 1 tensor\(s\)'):
        check_features((f, ), 2, 'Dual')
    with pytest.raises(ValueError,
                       match=r'of 1 visual encoder\(s\), got 3 tensor'):
        check_features((f, f, f), 1, 'Single')
    with pytest.raises(ValueError, match=r'of 1 visual encoder\(s\), got 0'):
        check_features((), 1, 'Single')


def test_check_features_mismatched_leading_sizes_and_dims():
    with pytest.raises(ValueError,
                       match=r'same leading sizes.*\(4, 3\), \(5, 3\)'):
        check_features((randn(4, 3), randn(5, 3)), 2, 'Owner')
    with pytest.raises(ValueError, match=r'\(N, C\).*\(2, 4, 3\)'):
        check_features((randn(2, 4, 3), ), 1, 'Owner')
    with pytest.raises(ValueError, match=r'\(N, C\).*\[\(4,\)\]'):
        check_features((randn(4), ), 1, 'Owner')


def test_check_features_views_take_three_dims():
    v1, v2 = randn(3, 5, 8), randn(3, 5, 4, seed=1)
    assert check_features([v1, v2], 2, 'fit', dims=3) == (v1, v2)
    with pytest.raises(ValueError, match=r'\(V, S, C\).*\(5, 8\)'):
        check_features((randn(5, 8), ), 1, 'fit', dims=3)
    # same number of images but another number of views
    with pytest.raises(ValueError, match=r'\(V, S, C\).*same leading'):
        check_features((v1, randn(2, 5, 4)), 2, 'fit', dims=3)
    # same number of views but other images
    with pytest.raises(ValueError, match=r'\(3, 5, 8\), \(3, 6, 8\)'):
        check_features((v1, randn(3, 6, 8)), 2, 'fit', dims=3)


# -- EncodedFeatures ---------------------------------------------------------
def test_encoded_features_checks_labels_against_features():
    feats = (randn(6, 3), randn(6, 5, seed=1))
    encoded = EncodedFeatures(list(feats), torch.arange(6))
    assert isinstance(encoded.feats, tuple)
    assert len(encoded) == 6 and encoded.num_sets == 2
    with pytest.raises(ValueError, match=r'labels \(5,\) do not match '
                       r'features \(6, 3\)'):
        EncodedFeatures(feats, torch.arange(5))
    with pytest.raises(ValueError, match='do not match'):
        EncodedFeatures(feats, torch.arange(6).view(2, 3))
    with pytest.raises(TypeError, match=r'\(feats, \)'):
        EncodedFeatures(randn(6, 3), torch.arange(6))
    with pytest.raises(ValueError, match='same leading sizes'):
        EncodedFeatures((randn(6, 3), randn(5, 3)), torch.arange(6))


@pytest.mark.parametrize('num_views,num_images', [(1, 4), (3, 4), (4, 3)])
def test_views_are_view_major(num_views, num_images):
    n = num_views * num_images
    feats = (randn(n, 5), randn(n, 2, seed=1))
    encoded = EncodedFeatures(feats, torch.arange(n) % num_images)
    views = encoded.views(num_views)
    assert isinstance(views, tuple) and len(views) == 2
    for f, v in zip(feats, views):
        assert v.shape == (num_views, num_images, f.shape[1])
        # Row v * S + s of the stored features is view v of image s.
        expected = torch.empty_like(v)
        row = 0
        for view in range(num_views):
            for image in range(num_images):
                expected[view, image] = f[row]
                row += 1
        assert torch.equal(v, expected)
    # every view of image s carries image s's label
    labels = encoded.labels.view(num_views, num_images)
    assert torch.equal(labels, labels[:1].expand_as(labels))


def test_views_not_divisible():
    encoded = EncodedFeatures((randn(10, 3), ), torch.zeros(10, dtype=int))
    with pytest.raises(ValueError,
                       match='10 features are not 3 views of the same'):
        encoded.views(3)
    with pytest.raises(ValueError, match='not 4 views'):
        encoded.views(4)
    assert encoded.views(5)[0].shape == (5, 2, 3)


def test_encoded_features_to_keeps_values():
    encoded = EncodedFeatures((randn(4, 3), ), torch.arange(4))
    moved = encoded.to('cpu')
    assert torch.equal(moved.feats[0], encoded.feats[0])
    assert torch.equal(moved.labels, encoded.labels)


# -- normalized --------------------------------------------------------------
def numpy_normalized(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_normalized_is_x_over_its_norm():
    a = randn(7, 5) * 3.0
    b = randn(2, 7, 4, seed=1).double() * 0.01  # views, float64
    out = normalized([a, b])
    assert isinstance(out, tuple) and len(out) == 2
    for x, y in zip((a, b), out):
        assert y.shape == x.shape and y.dtype == torch.float32
        np.testing.assert_allclose(y.numpy(), numpy_normalized(x.numpy()),
                                   rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(np.linalg.norm(y.numpy(), axis=-1), 1.0,
                                   rtol=1e-6)
    # the input is not changed
    assert not torch.allclose(a.norm(dim=-1), torch.ones(7))
