"""Encoded augmented views of the few-shot set, as a training dataset."""
from typing import Optional, Sequence

import torch

from mmpretrain.registry import DATASETS
from mmpretrain.structures import DataSample
from ..utils.features import feature_sets, one_or_tuple


@DATASETS.register_module()
class CachedViewsDataset:
    """Features of the ``V`` augmented views that built the cache.

    Tip-Adapter-F's fast path: fine-tuning reads these instead of decoding
    and encoding images, so the encoder does no work. Item ``j`` is view
    ``j // S`` of few-shot image ``j % S`` (``S`` images), as written by
    :class:`BuildCacheHook`; :class:`ViewCyclingSampler` picks one view of
    every image per epoch.

    Args:
        views_file (str, optional): The ``views_<key>.pth`` file of the
            feature store, with ``feats`` ``(V * S, C)`` (and
            ``second_feats`` ``(V * S, C2)`` with a second visual encoder:
            items are then the tuple of both) and ``labels`` ``(V * S,)``.
            :class:`FewShotRunner` fills it in when None.
        num_views (int, optional): V. :class:`FewShotRunner` fills it in.
        classes (sequence of str, optional): Class names, for
            ``metainfo``.
    """

    def __init__(self,
                 views_file: Optional[str] = None,
                 num_views: Optional[int] = None,
                 classes: Optional[Sequence[str]] = None) -> None:
        if views_file is None or num_views is None:
            raise ValueError(
                'CachedViewsDataset needs views_file and num_views; '
                'FewShotRunner (runner_type) sets them after building the '
                'cache. Use it, or give both explicitly.')
        data = torch.load(views_file, map_location='cpu', weights_only=True)
        # One tensor per visual encoder.
        self.feats = tuple(f.float() for f in feature_sets(data))
        self.labels = data['labels'].long()
        self.num_views = int(num_views)
        if len(self.labels) % self.num_views:
            raise ValueError(
                f'{views_file} holds {len(self.labels)} features, not a '
                f'multiple of num_views={self.num_views}.')
        self.num_images = len(self.labels) // self.num_views
        self.metainfo = dict(classes=tuple(classes or ()))

    def full_init(self) -> None:
        """Nothing to do: the features are loaded in ``__init__``."""

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: int) -> dict:
        sample = DataSample().set_gt_label(int(self.labels[idx]))
        sample.set_metainfo(dict(sample_idx=int(idx)))
        return dict(inputs=one_or_tuple([f[idx] for f in self.feats]),
                    data_samples=sample)
