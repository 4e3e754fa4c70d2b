"""One augmented view of every image per epoch."""
import math
from typing import Iterator, Optional, Sized

import torch
from mmengine.dist import get_dist_info, sync_random_seed

from mmpretrain.registry import DATA_SAMPLERS


@DATA_SAMPLERS.register_module()
class ViewCyclingSampler:
    """Sampler over a dataset of ``V`` views of ``S`` images
    (:class:`CachedViewsDataset`): epoch ``e`` visits each image once, in
    view ``e % V``, shuffled with ``seed + e``, and splits the visit across
    ranks as MMEngine's ``DefaultSampler`` does (padding the last ranks).

    The order depends only on the seed and the epoch, so a resumed run and
    runs on different numbers of ranks see the same global batches.

    Args:
        dataset: Has ``num_views`` and ``num_images``.
        shuffle (bool): Shuffle the images every epoch.
        seed (int, optional): Defaults to a seed shared by all ranks.
        round_up (bool): Pad to a multiple of the world size.
    """

    def __init__(self,
                 dataset: Sized,
                 shuffle: bool = True,
                 seed: Optional[int] = None,
                 round_up: bool = True) -> None:
        self.rank, self.world_size = get_dist_info()
        self.dataset = dataset
        self.shuffle = shuffle
        self.seed = sync_random_seed() if seed is None else int(seed)
        self.round_up = round_up
        self.epoch = 0
        images = dataset.num_images
        if round_up:
            self.num_samples = math.ceil(images / self.world_size)
            self.total_size = self.num_samples * self.world_size
        else:
            self.num_samples = math.ceil(
                (images - self.rank) / self.world_size)
            self.total_size = images

    def __iter__(self) -> Iterator[int]:
        images = self.dataset.num_images
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(images, generator=g).tolist()
        else:
            order = list(range(images))
        view = self.epoch % self.dataset.num_views
        indices = [view * images + i for i in order]
        if self.round_up:
            indices = (
                indices *
                int(self.total_size / len(indices) + 1))[:self.total_size]
        return iter(indices[self.rank:self.total_size:self.world_size])

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
