"""The fast path's data: stored-feature datasets (one item per sample, one
feature per visual encoder), cached views read from the feature store, the
view-cycling sampler and the preprocessor that stacks features."""
import re

import pytest
import torch
from mmengine.dataset import default_collate, pseudo_collate

from tip_adapter_mm.datasets import (CachedViewsDataset,
                                     StoredFeaturesDataset,
                                     ViewCyclingSampler)
from tip_adapter_mm.engine import FeatureStore, StoredFeaturesError
from tip_adapter_mm.models import FeatureOrImageDataPreprocessor
from tip_adapter_mm.structures import EncodedFeatures


def first_encoder(n):
    """Feature j = [j, -j]."""
    return torch.arange(n, dtype=torch.float32)[:, None] * torch.tensor(
        [1.0, -1.0])


def second_encoder(n):
    """Feature j = [j, j * j, 1] (another width than the first)."""
    j = torch.arange(n, dtype=torch.float32)
    return torch.stack([j, j * j, torch.ones(n)], dim=1)


def save_views(root, *feats, labels):
    return FeatureStore(str(root)).save(
        'support_views', {'any': 'description'},
        EncodedFeatures(feats=tuple(feats), labels=labels))


@pytest.fixture
def views_file(tmp_path):
    # 3 views of 5 images, feature j = [j, -j], label = image % 2
    return save_views(tmp_path, first_encoder(15),
                      labels=torch.arange(15) % 5 % 2)


# -- StoredFeaturesDataset ---------------------------------------------------
@pytest.mark.parametrize('num_encoders', [1, 2])
def test_stored_features_items(num_encoders):
    feats = (first_encoder(6), second_encoder(6))[:num_encoders]
    labels = torch.tensor([2, 0, 1, 1, 0, 2])
    paths = [f'img_{i}.jpg' for i in range(6)]
    data = StoredFeaturesDataset(
        EncodedFeatures(feats, labels), dict(classes=('a', 'b', 'c')),
        img_paths=paths)
    assert len(data) == 6
    assert data.metainfo['classes'] == ('a', 'b', 'c')
    for i in range(6):
        item = data[i]
        assert isinstance(item['feats'], tuple)
        assert len(item['feats']) == num_encoders
        assert torch.equal(item['feats'][0], torch.tensor([i, -i]).float())
        if num_encoders == 2:
            assert torch.equal(item['feats'][1],
                               torch.tensor([i, i * i, 1]).float())
        sample = item['data_samples']
        assert sample.gt_label.tolist() == [labels[i].item()]
        assert sample.sample_idx == i
        assert sample.img_path == f'img_{i}.jpg'

    # Without image paths the samples carry none; dtypes are normalised.
    bare = StoredFeaturesDataset(
        EncodedFeatures(tuple(f.double() for f in feats), labels.int()))
    item = bare[torch.tensor(4)]  # a tensor index, as samplers may give
    assert 'img_path' not in item['data_samples']
    assert item['data_samples'].sample_idx == 4
    assert all(f.dtype == torch.float32 for f in item['feats'])
    assert item['data_samples'].gt_label.dtype == torch.int64
    assert torch.equal(item['feats'][0], torch.tensor([4.0, -4.0]))
    assert bare.metainfo == {}

    with pytest.raises(ValueError, match='5 image paths for 6 features'):
        StoredFeaturesDataset(EncodedFeatures(feats, labels),
                              img_paths=paths[:5])


# -- CachedViewsDataset ------------------------------------------------------
def test_cached_views_items(views_file):
    data = CachedViewsDataset(views_file, num_views=3, classes=['a', 'b'])
    assert len(data) == 15 and data.num_images == 5 and data.num_views == 3
    item = data[7]
    assert 'inputs' not in item
    assert isinstance(item['feats'], tuple) and len(item['feats']) == 1
    assert torch.equal(item['feats'][0], torch.tensor([7.0, -7.0]))
    assert item['data_samples'].gt_label.item() == 7 % 5 % 2
    assert item['data_samples'].sample_idx == 7
    assert data.metainfo['classes'] == ('a', 'b')
    with pytest.raises(ValueError, match='not a multiple of num_views=4'):
        CachedViewsDataset(views_file, num_views=4)
    with pytest.raises(ValueError, match='FewShotTrainLoop'):
        CachedViewsDataset()


def test_cached_views_of_two_encoders(tmp_path):
    # 2 views of 4 images
    path = save_views(tmp_path, first_encoder(8), second_encoder(8),
                      labels=torch.arange(8) % 4)
    data = CachedViewsDataset(path, num_views=2)
    assert len(data) == 8 and data.num_images == 4
    for j in range(8):
        f1, f2 = data[j]['feats']
        assert torch.equal(f1, torch.tensor([j, -j]).float())
        assert torch.equal(f2, torch.tensor([j, j * j, 1]).float())
        assert data[j]['data_samples'].gt_label.item() == j % 4


def test_cached_views_refuse_a_file_not_from_the_feature_store(tmp_path):
    plain = tmp_path / 'plain_views.pth'
    torch.save(dict(feats=first_encoder(15), labels=torch.arange(15) % 2),
               plain)
    with pytest.raises(StoredFeaturesError,
                       match=re.escape(repr(str(plain)))) as err:
        CachedViewsDataset(str(plain), num_views=3)
    assert err.value.path == str(plain)
    assert 'layout' in str(err.value)
    # Not a torch file at all: also named.
    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'not a torch file')
    with pytest.raises(StoredFeaturesError, match='garbage.pth'):
        CachedViewsDataset(str(garbage), num_views=3)


# -- ViewCyclingSampler ------------------------------------------------------
def test_sampler_visits_every_image_once_in_the_epochs_view(views_file):
    data = CachedViewsDataset(views_file, num_views=3)
    sampler = ViewCyclingSampler(data, shuffle=True, seed=0)
    seen = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        indices = list(sampler)
        assert len(indices) == len(sampler) == 5
        assert sorted(i % 5 for i in indices) == list(range(5))
        assert {i // 5 for i in indices} == {epoch % 3}
        seen.append(indices)
    assert [i % 5 for i in seen[0]] != [i % 5 for i in seen[1]]
    again = ViewCyclingSampler(data, shuffle=True, seed=0)
    again.set_epoch(1)
    assert list(again) == seen[1]


def test_sampler_splits_ranks_like_default_sampler(views_file, monkeypatch):
    import tip_adapter_mm.datasets.samplers.view_cycling as module
    data = CachedViewsDataset(views_file, num_views=3)
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(module, 'get_dist_info', lambda r=rank: (r, 2))
        sampler = ViewCyclingSampler(data, shuffle=True, seed=3)
        sampler.set_epoch(2)
        shards.append(list(sampler))
    monkeypatch.setattr(module, 'get_dist_info', lambda: (0, 1))
    single = ViewCyclingSampler(data, shuffle=True, seed=3)
    single.set_epoch(2)
    order = list(single)
    assert len(shards[0]) == len(shards[1]) == 3  # 5 padded to 6
    assert shards[0] == (order + order[:1])[0::2]
    assert shards[1] == (order + order[:1])[1::2]


# -- FeatureOrImageDataPreprocessor ------------------------------------------
def preprocessor():
    return FeatureOrImageDataPreprocessor(mean=(1.0, 2.0, 3.0),
                                          std=(2.0, 2.0, 2.0), to_rgb=True)


def two_encoder_items(indices):
    data = StoredFeaturesDataset(
        EncodedFeatures((first_encoder(6).double(), second_encoder(6)),
                        torch.tensor([0, 1, 2, 0, 1, 2])))
    return [data[i] for i in indices]


@pytest.mark.parametrize('collate', [pseudo_collate, default_collate])
def test_preprocessor_stacks_features_per_encoder(collate):
    indices = [4, 1, 5]
    items = two_encoder_items(indices)
    batch = collate(items)
    if collate is pseudo_collate:  # one sequence of samples per encoder
        assert all(not isinstance(f, torch.Tensor) for f in batch['feats'])
    else:  # one stacked tensor per encoder
        assert all(isinstance(f, torch.Tensor) for f in batch['feats'])
    out = preprocessor()(batch)
    assert set(out) == {'feats', 'data_samples'}
    assert isinstance(out['feats'], tuple) and len(out['feats']) == 2
    expected = (torch.tensor([[i, -i] for i in indices]).float(),
                torch.tensor([[i, i * i, 1] for i in indices]).float())
    for got, want in zip(out['feats'], expected):
        assert got.dtype == torch.float32  # not normalised, float32
        assert torch.equal(got, want)
    assert [s.sample_idx for s in out['data_samples']] == indices
    assert [s.gt_label.item() for s in out['data_samples']] == [1, 1, 2]


def test_preprocessor_takes_list_of_lists_and_normalises_images():
    pre = preprocessor()
    # pseudo_collate-like: per encoder, a list of (C_e, ) samples
    f1 = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])]
    f2 = [torch.tensor([5.0, 6.0, 7.0]), torch.tensor([8.0, 9.0, 10.0])]
    out = pre(dict(feats=[f1, f2], data_samples=None))
    assert isinstance(out['feats'], tuple) and len(out['feats']) == 2
    assert torch.equal(out['feats'][0],
                       torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert torch.equal(out['feats'][1],
                       torch.tensor([[5.0, 6.0, 7.0], [8.0, 9.0, 10.0]]))
    out = pre(dict(feats=[f1], data_samples=None))
    assert len(out['feats']) == 1
    assert torch.equal(out['feats'][0],
                       torch.tensor([[1.0, 2.0], [3.0, 4.0]]))

    image = torch.zeros(3, 2, 2, dtype=torch.uint8)
    image[0] = 9  # B channel in BGR
    out = pre(dict(inputs=[image], data_samples=None))
    assert 'feats' not in out
    assert out['inputs'].shape == (1, 3, 2, 2)
    # BGR -> RGB, then (x - mean) / std
    assert out['inputs'][0, 2, 0, 0].item() == (9 - 3.0) / 2.0
    assert out['inputs'][0, 0, 0, 0].item() == (0 - 1.0) / 2.0
