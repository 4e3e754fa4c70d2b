"""Several seeded augmentations of every sample, as one flat dataset."""
from typing import Union

from mmengine.dataset import BaseDataset

from mmpretrain.registry import DATASETS
from ..utils.rng import derive_seed, seeded_rng
from .few_shot import SubsetDataset
from .sample import load_sample


@DATASETS.register_module()
class AugmentedViewsDataset:
    """``num_views`` augmented passes over ``dataset``, flattened.

    Item ``j`` is view ``j // len(dataset)`` of sample ``j % len(dataset)``,
    with ``sample_idx = j``. Its random transforms run under a generator
    seeded by ``(seed, view, sample)``, so the same view of the same sample
    is identical whatever the number of ranks or dataloader workers. This
    is how the cache model's ``augment_epoch`` passes are encoded in one
    loader pass.

    Args:
        dataset (dict | BaseDataset): The few-shot set with the train
            pipeline (e.g. :class:`FewShotDataset`).
        num_views (int): Augmented passes (Tip-Adapter's ``augment_epoch``).
        seed (int): Seed of the augmentations.
    """

    def __init__(self, dataset: Union[dict, BaseDataset], num_views: int,
                 seed: int = 0) -> None:
        if isinstance(dataset, dict):
            dataset = DATASETS.build(dataset)
        if int(num_views) < 1:
            raise ValueError(f'num_views must be >= 1, got {num_views}.')
        self.dataset = dataset
        self.num_views = int(num_views)
        self.seed = int(seed)

    @property
    def metainfo(self) -> dict:
        return self.dataset.metainfo

    def full_init(self) -> None:
        """Nothing to do: the wrapped dataset is initialised already."""

    def __len__(self) -> int:
        return self.num_views * len(self.dataset)

    def __getitem__(self, idx: int) -> dict:
        view, sample = divmod(int(idx), len(self.dataset))
        with seeded_rng(derive_seed(self.seed, view, sample)):
            if isinstance(self.dataset, SubsetDataset):
                return self.dataset.load(sample, idx)
            return load_sample(self.dataset, sample, idx)
