"""Few-shot draws, held-out validation subsets, seeded augmented views."""
import numpy as np
import pytest
import torch
from mmengine.dataset import BaseDataset

from tip_adapter_mm.datasets import (AugmentedViewsDataset, FewShotDataset,
                                     HoldoutDataset)


class ListDataset(BaseDataset):
    """An in-memory labelled dataset with ``counts[c]`` samples of class c."""

    def __init__(self, counts, pipeline=()):
        self.counts = counts
        super().__init__(
            metainfo=dict(classes=[f'class_{c}' for c in range(len(counts))]),
            pipeline=list(pipeline), serialize_data=False)

    def load_data_list(self):
        return [dict(img_path=f'{c}_{i}.jpg', gt_label=c)
                for c, n in enumerate(self.counts) for i in range(n)]


def paths(dataset):
    return [dataset.get_data_info(i)['img_path'] for i in range(len(dataset))]


def test_k_per_class_same_seed_same_shots():
    base = ListDataset([20, 30, 25])
    a = FewShotDataset(base, num_shots=4, seed=1)
    b = FewShotDataset(ListDataset([20, 30, 25]), num_shots=4, seed=1)
    assert len(a) == 12
    assert np.bincount(a.get_gt_labels()).tolist() == [4, 4, 4]
    assert paths(a) == paths(b)
    assert [a.get_data_info(i)['sample_idx'] for i in range(12)] == list(
        range(12))
    assert tuple(a.metainfo['classes']) == ('class_0', 'class_1', 'class_2')


def test_different_seed_different_shots():
    base = ListDataset([20, 30, 25])
    assert paths(FewShotDataset(base, 4, seed=1)) != paths(
        FewShotDataset(base, 4, seed=2))


def test_shots_of_one_class_do_not_depend_on_other_classes():
    a = FewShotDataset(ListDataset([20, 30]), 4, seed=3)
    b = FewShotDataset(ListDataset([20, 31]), 4, seed=3)
    assert paths(a)[:4] == paths(b)[:4]


def test_too_few_images_names_the_class():
    base = ListDataset([20, 3, 25])
    with pytest.raises(ValueError, match=r"Class 1 \('class_1'\) has 3 "
                       r'images.*num_shots=4'):
        FewShotDataset(base, num_shots=4, seed=1)


def test_holdout_is_disjoint_from_shots_for_any_k_and_seed():
    base = ListDataset([30, 30, 30])
    holdout = HoldoutDataset(base, num_per_class=10, seed=0)
    assert np.bincount(holdout.get_gt_labels()).tolist() == [10, 10, 10]
    held = set(paths(holdout))
    for seed in (1, 2, 3):
        for k in (1, 8, 20):
            shots = FewShotDataset(base, k, seed=seed,
                                   holdout=dict(num_per_class=10, seed=0))
            assert not held & set(paths(shots))
    with pytest.raises(ValueError, match=r'20 images available.*10 held '
                       r'out for validation.*num_shots=21'):
        FewShotDataset(base, 21, seed=1,
                       holdout=dict(num_per_class=10, seed=0))


class RandomNumber:
    """A stand-in random transform: draws from NumPy's global generator."""

    def __call__(self, results):
        results['draw'] = float(np.random.rand())
        results['torch_draw'] = float(torch.rand(1))
        return results


def test_augmented_views_are_seeded_per_sample_and_view():
    base = ListDataset([3, 3], pipeline=[RandomNumber()])
    views = AugmentedViewsDataset(FewShotDataset(base, 2, seed=1),
                                  num_views=3, seed=7)
    assert len(views) == 12
    forward = [views[i] for i in range(12)]
    np.random.seed(123)  # the caller's state must not matter
    backward = [views[i] for i in reversed(range(12))][::-1]
    assert [d['draw'] for d in forward] == [d['draw'] for d in backward]
    assert [d['torch_draw'] for d in forward] == [
        d['torch_draw'] for d in backward]
    assert [d['sample_idx'] for d in forward] == list(range(12))
    # view v of sample s is item v * 4 + s, and views differ
    assert forward[1]['img_path'] == forward[5]['img_path']
    assert forward[1]['draw'] != forward[5]['draw']
    other_seed = AugmentedViewsDataset(views.dataset, 3, seed=8)
    assert other_seed[0]['draw'] != forward[0]['draw']


def test_augmented_views_restore_callers_random_state():
    base = ListDataset([3], pipeline=[RandomNumber()])
    views = AugmentedViewsDataset(base, num_views=2)
    np.random.seed(5)
    expected = np.random.rand()
    np.random.seed(5)
    views[0]
    assert np.random.rand() == expected


def test_unreadable_image_error_names_the_file(tmp_path):
    from mmpretrain.datasets import CustomDataset
    (tmp_path / 'cat').mkdir()
    (tmp_path / 'cat' / 'broken.jpg').write_bytes(b'not a jpeg at all')
    data = CustomDataset(data_root=str(tmp_path),
                         pipeline=[dict(type='LoadImageFromFile')])
    shots = FewShotDataset(data, num_shots=1, seed=1)
    with pytest.raises(RuntimeError, match=r'broken\.jpg.*readable image'):
        shots[0]
