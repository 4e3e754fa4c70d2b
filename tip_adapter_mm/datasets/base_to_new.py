"""Base-to-new generalisation (CoCoOp, Zhou et al., CVPR 2022): the classes
of a dataset split into a base half, which the model adapts on, and the new
rest, which it is tested on without having seen them."""
import math
from typing import List, Tuple, Union

from mmengine.dataset import BaseDataset as MMEngineBaseDataset

from mmpretrain.datasets import BaseDataset
from mmpretrain.registry import DATASETS
from .sample import check_mmengine_dataset

SUBSETS = ('base', 'new', 'all')


def base_new_labels(num_classes: int, subset: str) -> Tuple[int, ...]:
    """The original labels of ``subset`` of ``num_classes`` classes.

    ``'base'`` is the first ``ceil(N / 2)`` labels, ``'new'`` the other
    ``floor(N / 2)`` (an odd N puts the extra class in base, as CoCoOp's
    ``subsample_classes``), ``'all'`` every label.
    """
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}.")
    if num_classes < 2:
        raise ValueError('A base/new split needs at least 2 classes, got '
                         f'{num_classes}.')
    half = math.ceil(num_classes / 2)
    ranges = dict(base=range(half), new=range(half, num_classes),
                  all=range(num_classes))
    return tuple(ranges[subset])


@DATASETS.register_module()
class BaseToNewDataset(BaseDataset):
    """The samples of ``dataset`` whose class is in the base or new half.

    Label ``c`` of the subset is the ``c``-th of the subset's original
    labels (base: ``c``; new: ``c + ceil(N / 2)``); ``metainfo['classes']``
    is the subset's names in that order, so a head of ``n`` classes and
    prompts built from the names see only the subset. ``N`` is the length
    of the wrapped dataset's ``metainfo['classes']`` (every class, whether
    or not this split has samples of it). ``metainfo['source_labels']``
    holds the original labels. Samples keep their order and every other
    field (``img_path``...). It is an MMEngine dataset, so
    :class:`FewShotDataset` and :class:`HoldoutDataset` wrap it: shots are
    then drawn from the subset's classes only.

    Args:
        dataset (dict | BaseDataset): The full split (its config or the
            built dataset), with its pipeline.
        subset (str): ``'base'``, ``'new'`` or ``'all'``.
    """

    def __init__(self, dataset: Union[dict, MMEngineBaseDataset],
                 subset: str = 'base') -> None:
        if isinstance(dataset, dict):
            dataset = DATASETS.build(dataset)
        self.dataset = check_mmengine_dataset(dataset, 'BaseToNewDataset')
        classes = self.dataset.metainfo.get('classes')
        if not classes:
            raise ValueError(
                'BaseToNewDataset: the wrapped '
                f'{type(self.dataset).__name__} has no '
                "metainfo['classes']; the split is by class, it needs them.")
        self.subset = subset
        self.source_labels = base_new_labels(len(classes), subset)
        metainfo = dict(
            classes=tuple(classes[c] for c in self.source_labels),
            source_labels=self.source_labels)
        super().__init__(ann_file='', metainfo=metainfo)
        self.pipeline = self.dataset.pipeline

    def load_data_list(self) -> List[dict]:
        relabel = {c: i for i, c in enumerate(self.source_labels)}
        data_list = []
        for idx in range(len(self.dataset)):
            info = self.dataset.get_data_info(idx)
            label = int(info['gt_label'])
            if label in relabel:
                info.pop('sample_idx', None)
                info['gt_label'] = relabel[label]
                data_list.append(info)
        return data_list
