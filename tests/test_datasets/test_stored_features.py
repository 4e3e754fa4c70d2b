"""The fast path's data: cached views, the view-cycling sampler and the
preprocessor that passes features through."""
import pytest
import torch

from tip_adapter_mm.datasets import CachedViewsDataset, ViewCyclingSampler
from tip_adapter_mm.models import FeatureOrImageDataPreprocessor


@pytest.fixture
def views_file(tmp_path):
    # 3 views of 5 images, feature j = [j, -j], label = image % 2
    feats = torch.arange(15, dtype=torch.float32)[:, None] * torch.tensor(
        [1.0, -1.0])
    labels = torch.arange(15) % 5 % 2
    path = tmp_path / 'views.pth'
    torch.save(dict(feats=feats, labels=labels), path)
    return str(path)


def test_cached_views_items(views_file):
    data = CachedViewsDataset(views_file, num_views=3, classes=['a', 'b'])
    assert len(data) == 15 and data.num_images == 5
    item = data[7]
    assert torch.equal(item['inputs'], torch.tensor([7.0, -7.0]))
    assert item['data_samples'].gt_label.item() == 7 % 5 % 2
    assert item['data_samples'].sample_idx == 7
    assert data.metainfo['classes'] == ('a', 'b')
    with pytest.raises(ValueError, match='not a multiple of num_views=4'):
        CachedViewsDataset(views_file, num_views=4)
    with pytest.raises(ValueError, match='FewShotRunner'):
        CachedViewsDataset()


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


def test_preprocessor_passes_features_and_normalises_images():
    pre = FeatureOrImageDataPreprocessor(mean=(1.0, 2.0, 3.0),
                                         std=(2.0, 2.0, 2.0), to_rgb=True)
    feats = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])]
    out = pre(dict(inputs=feats, data_samples=None))
    assert torch.equal(out['inputs'], torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    image = torch.zeros(3, 2, 2, dtype=torch.uint8)
    image[0] = 9  # B channel in BGR
    out = pre(dict(inputs=[image], data_samples=None))
    assert out['inputs'].shape == (1, 3, 2, 2)
    # BGR -> RGB, then (x - mean) / std
    assert out['inputs'][0, 2, 0, 0].item() == (9 - 3.0) / 2.0
    assert out['inputs'][0, 0, 0, 0].item() == (0 - 1.0) / 2.0
