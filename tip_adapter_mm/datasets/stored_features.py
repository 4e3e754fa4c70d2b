"""Encoded features as datasets: the test and val loops, and Tip-Adapter-F's
fast path, read these instead of images."""
from typing import List, Optional, Sequence

from mmpretrain.registry import DATASETS
from mmpretrain.structures import DataSample
from ..structures import EncodedFeatures


class StoredFeaturesDataset:
    """The encoded features of a split, one item per sample.

    Item ``i`` is ``dict(feats=(f_1, ..., f_E), data_samples=sample)``: one
    raw ``(C_e, )`` feature per visual encoder, and a ``DataSample`` with
    the label, ``sample_idx = i`` and (when given) the image path. The
    ``feats`` key is what tells the data preprocessor and the classifier
    that these are features, not images.

    The tensors are used as they are when they are float32 features and
    int64 labels (as the feature store writes them): no copy is made, so
    features read through memory mapping stay shared between processes, and
    an item's features are views of their rows.

    Args:
        features: The split's features (row ``i`` is sample ``i``).
        metainfo (dict, optional): The image dataset's (class names).
        img_paths (sequence of str, optional): Each sample's image file.
    """

    def __init__(self,
                 features: EncodedFeatures,
                 metainfo: Optional[dict] = None,
                 img_paths: Optional[Sequence[str]] = None) -> None:
        if img_paths is not None and len(img_paths) != len(features):
            raise ValueError(f'{len(img_paths)} image paths for '
                             f'{len(features)} features.')
        self.features = features
        self.feats = tuple(f.float() for f in features.feats)
        self.labels = features.labels.long()
        self.metainfo = dict(metainfo or {})
        self.img_paths: Optional[List[str]] = (list(img_paths)
                                               if img_paths else None)

    def full_init(self) -> None:
        """Nothing to do: the features are in memory."""

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: int) -> dict:
        idx = int(idx)
        sample = DataSample().set_gt_label(int(self.labels[idx]))
        info = dict(sample_idx=idx)
        if self.img_paths is not None:
            info['img_path'] = self.img_paths[idx]
        sample.set_metainfo(info)
        return dict(feats=tuple(f[idx] for f in self.feats),
                    data_samples=sample)


@DATASETS.register_module()
class CachedViewsDataset(StoredFeaturesDataset):
    """The features of the ``V`` augmented views that built the cache, as a
    training set.

    Tip-Adapter-F's fast path: fine-tuning reads these instead of decoding
    and encoding images, so the encoders do no work. Item ``j`` is view
    ``j // S`` of few-shot image ``j % S`` (``S`` images);
    :class:`ViewCyclingSampler` picks one view of every image per epoch.

    Args:
        views_file (str, optional): A stored-feature file of the views
            (``support_views_<key>.pth`` of the feature store). Filled in by
            :class:`FewShotTrainLoop` when None.
        num_views (int, optional): V. Filled in likewise.
        classes (sequence of str, optional): Class names, for
            ``metainfo``.
        mmap (bool): Read the file through memory mapping
            (:func:`~tip_adapter_mm.engine.feature_store.read_features`), so
            that the processes of one machine (the ranks of a distributed
            run) share one copy of the views instead of holding one each.
            Defaults to True.
    """

    def __init__(self,
                 views_file: Optional[str] = None,
                 num_views: Optional[int] = None,
                 classes: Optional[Sequence[str]] = None,
                 mmap: bool = True) -> None:
        from ..engine.feature_store import read_features
        if views_file is None or num_views is None:
            raise ValueError(
                'CachedViewsDataset needs views_file and num_views; '
                "FewShotTrainLoop (train_cfg type='FewShotTrainLoop') fills "
                'them in with the views the cache was built from. Use it, or '
                'give both explicitly.')
        features = read_features(views_file, mmap=mmap)
        super().__init__(features, dict(classes=tuple(classes or ())))
        self.num_views = int(num_views)
        if len(self) % self.num_views:
            raise ValueError(
                f'{views_file} holds {len(self)} features, not a multiple '
                f'of num_views={self.num_views}.')
        self.num_images = len(self) // self.num_views
