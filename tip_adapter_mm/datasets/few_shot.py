"""K-shot subsets and held-out validation subsets of a labelled dataset."""
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
from mmengine.dataset import BaseDataset

from mmpretrain.registry import DATASETS
from .sample import check_mmengine_dataset, load_sample


def dataset_labels(dataset: BaseDataset) -> np.ndarray:
    """Ground-truth labels of every sample, ``(len(dataset),)`` int64."""
    if hasattr(dataset, 'get_gt_labels'):
        return np.asarray(dataset.get_gt_labels(), dtype=np.int64)
    return np.asarray(
        [int(dataset.get_data_info(i)['gt_label'])
         for i in range(len(dataset))], dtype=np.int64)


def class_name(dataset: BaseDataset, label: int) -> str:
    classes = dataset.metainfo.get('classes')
    if classes is not None and label < len(classes):
        return f'{label} ({classes[label]!r})'
    return str(label)


def per_class_permutations(labels: np.ndarray,
                           seed: int) -> Dict[int, np.ndarray]:
    """A seeded random order of the sample indices of each class.

    The order of class ``c`` depends only on ``seed`` and on the indices of
    class ``c``, not on the other classes or on the process that asks.
    """
    orders = {}
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng = np.random.default_rng([int(seed), int(label)])
        orders[int(label)] = members[rng.permutation(len(members))]
    return orders


def holdout_indices(labels: np.ndarray, num_per_class: int,
                    seed: int) -> np.ndarray:
    """``num_per_class`` seeded indices per class, sorted."""
    orders = per_class_permutations(labels, seed)
    picked = [order[:num_per_class] for order in orders.values()]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, int)


def few_shot_indices(labels: np.ndarray,
                     num_shots: int,
                     seed: int,
                     exclude: Sequence[int] = (),
                     describe=str) -> np.ndarray:
    """``num_shots`` seeded indices per class, outside ``exclude``, sorted.

    Raises:
        ValueError: a class has fewer than ``num_shots`` candidates; the
            message names the class and how many it has.
    """
    excluded = np.asarray(exclude, dtype=np.int64)
    picked: List[np.ndarray] = []
    for label, order in per_class_permutations(labels, seed).items():
        candidates = order[~np.isin(order, excluded)]
        if len(candidates) < num_shots:
            held = len(order) - len(candidates)
            raise ValueError(
                f'Class {describe(label)} has {len(candidates)} images '
                f'available for few-shot sampling'
                + (f' ({len(order)} in total, {held} held out for '
                   'validation)' if held else '')
                + f', fewer than num_shots={num_shots}. Lower num_shots or '
                'add images to that class.')
        picked.append(candidates[:num_shots])
    return np.sort(np.concatenate(picked))


class SubsetDataset:
    """A fixed subset of an MMEngine dataset, re-indexed from 0.

    ``sample_idx`` of each item is its index in the subset. ``metainfo``
    (class names) is the wrapped dataset's.
    """

    def __init__(self, dataset: Union[dict, BaseDataset]) -> None:
        if isinstance(dataset, dict):
            dataset = DATASETS.build(dataset)
        self.dataset = check_mmengine_dataset(dataset, type(self).__name__)
        self.indices = np.zeros(0, dtype=np.int64)

    @property
    def metainfo(self) -> dict:
        return self.dataset.metainfo

    @property
    def pipeline(self):
        return self.dataset.pipeline

    def full_init(self) -> None:
        """Nothing to do: the subset is drawn in ``__init__``."""

    def get_data_info(self, idx: int) -> dict:
        info = self.dataset.get_data_info(int(self.indices[idx]))
        info['sample_idx'] = idx
        return info

    def get_gt_labels(self) -> np.ndarray:
        return self.labels[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, idx: int, sample_idx: int) -> dict:
        """Item ``idx`` of the subset, packed with ``sample_idx``."""
        return load_sample(self.dataset, int(self.indices[idx]), sample_idx)

    def __getitem__(self, idx: int) -> dict:
        return self.load(idx, idx)


@DATASETS.register_module()
class FewShotDataset(SubsetDataset):
    """K images per class drawn from ``dataset`` with a seed, or the exact
    shots listed in a split file.

    The draw depends only on ``(seed, num_shots, labels, holdout)``, so every
    rank of a distributed run, and every later run, gets the same shots.
    ``tip_adapter_mm.datasets.split_files.save_split_file`` (or
    ``tools/split_file.py export``) writes them to a file that reproduces
    them elsewhere.

    Args:
        dataset (dict | BaseDataset): The full labelled split, e.g. an
            MMPretrain ``ImageNet(split='train')`` with the train pipeline.
        num_shots (int, optional): K, images per class. Required without
            ``split_file``; with one, None takes the file's K and a number
            must equal it.
        seed (int, optional): Seed of the draw (also the seed of the
            augmented views). Defaults to 1 without ``split_file``; with one,
            None takes the file's seed and a number must equal it.
        holdout (dict, optional): ``dict(num_per_class=10, seed=0)`` keeps
            the images of :class:`HoldoutDataset` with the same arguments out
            of the draw, so a validation set carved from the same split is
            disjoint from the shots for every ``num_shots`` and ``seed``.
            With ``split_file``, a listed image in the held-out subset is an
            error.
        split_file (str, optional): A split file (``split_files`` format):
            the shots are exactly its samples, in its order, found in
            ``dataset`` by their path relative to its image folder. Its
            class names and every label must be the dataset's.
    """

    def __init__(self,
                 dataset: Union[dict, BaseDataset],
                 num_shots: Optional[int] = None,
                 seed: Optional[int] = None,
                 holdout: Optional[dict] = None,
                 split_file: Optional[str] = None) -> None:
        super().__init__(dataset)
        self.holdout = dict(holdout) if holdout else None
        self.split_file = split_file
        self.labels = dataset_labels(self.dataset)
        exclude = (holdout_indices(self.labels, **self.holdout)
                   if self.holdout else np.zeros(0, dtype=np.int64))
        if split_file is not None:
            self._read_split_file(split_file, num_shots, seed, exclude)
            return
        if num_shots is None or int(num_shots) < 1:
            raise ValueError(f'num_shots must be >= 1, got {num_shots}.')
        self.num_shots = int(num_shots)
        self.seed = 1 if seed is None else int(seed)
        self.source = None
        self.indices = few_shot_indices(
            self.labels, self.num_shots, self.seed, exclude,
            describe=lambda c: class_name(self.dataset, c))

    def _read_split_file(self, path: str, num_shots: Optional[int],
                         seed: Optional[int], exclude: np.ndarray) -> None:
        from .split_files import load_split_file, split_indices
        split = load_split_file(path)
        for key, given, stored in (('num_shots', num_shots, split.num_shots),
                                   ('seed', seed, split.seed)):
            if given is not None and int(given) != stored:
                raise ValueError(
                    f'FewShotDataset: {key}={given} but the split file '
                    f'{path} holds {key}={stored}. Set {key} to {stored} or '
                    'to None (taken from the file).')
        self.num_shots = split.num_shots
        self.seed = split.seed
        self.source = split.source  # a re-export reproduces the file
        indices = split_indices(split, self.dataset, f'Split file {path}')
        held = indices[np.isin(indices, exclude)]
        if len(held):
            info = self.dataset.get_data_info(int(held[0]))
            raise ValueError(
                f'Split file {path}: image {info.get("img_path")!r} (and '
                f'{len(held) - 1} more) is in the held-out validation subset '
                f'holdout={self.holdout}; shots and validation must be '
                'disjoint: validate on another split (then set holdout=None '
                'here).')
        self.indices = indices


@DATASETS.register_module()
class HoldoutDataset(SubsetDataset):
    """A seeded, class-balanced subset used as a validation split.

    For datasets without a validation split of their own (ImageNet), it is
    carved from the train split; pass the same ``num_per_class`` and
    ``seed`` as ``holdout`` to :class:`FewShotDataset` to keep the two
    disjoint.

    Args:
        dataset (dict | BaseDataset): The split to carve from.
        num_per_class (int): Images per class. Defaults to 10.
        seed (int): Seed of the draw. Defaults to 0.
    """

    def __init__(self,
                 dataset: Union[dict, BaseDataset],
                 num_per_class: int = 10,
                 seed: int = 0) -> None:
        super().__init__(dataset)
        self.num_per_class = int(num_per_class)
        self.seed = int(seed)
        self.labels = dataset_labels(self.dataset)
        counts = np.bincount(self.labels)
        short = np.flatnonzero((counts > 0) & (counts < self.num_per_class))
        if len(short):
            first = int(short[0])
            raise ValueError(
                f'Class {class_name(self.dataset, first)} has '
                f'{counts[first]} images, fewer than '
                f'num_per_class={self.num_per_class} for the held-out '
                'validation subset.')
        self.indices = holdout_indices(self.labels, self.num_per_class,
                                       self.seed)
