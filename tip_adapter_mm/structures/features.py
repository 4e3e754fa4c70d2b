"""The features contract: one tensor per visual encoder, always a tuple.

A model has one visual encoder (CLIP's) or several (a second cache's
encoder). Everything that carries features (heads, the classifier's
feature path, the feature store, the stored-feature datasets) carries a
tuple with one entry per encoder, in the order of the model's encoders,
never a bare tensor.
"""
from dataclasses import dataclass
from typing import Any, Sequence, Tuple

import torch

Features = Tuple[torch.Tensor, ...]


def check_features(feats: Any, num_sets: int, owner: str,
                   dims: int = 2) -> Features:
    """Check that ``feats`` is a tuple (or list) of ``num_sets`` tensors of
    ``dims`` dimensions with the same first size, and return it as a tuple.

    Args:
        feats: What was passed.
        num_sets: Visual encoders the receiver expects.
        owner: Who receives them, for the message (e.g. ``'TipAdapterHead'``).
        dims: Dimensions of each tensor: 2 for ``(N, C)``, 3 for the views
            ``(V, S, C)``.

    Raises:
        TypeError: a bare tensor, or not a sequence of tensors.
        ValueError: the wrong number of tensors, or mismatched shapes.
    """
    shape = '(N, C)' if dims == 2 else '(V, S, C)'
    if isinstance(feats, torch.Tensor):
        raise TypeError(
            f'{owner} takes a tuple of feature tensors, one {shape} tensor '
            f'per visual encoder, got a bare tensor of shape '
            f'{tuple(feats.shape)}: pass (feats, ) for one encoder.')
    if not isinstance(feats, (tuple, list)) or not all(
            isinstance(f, torch.Tensor) for f in feats):
        raise TypeError(f'{owner} takes a tuple of feature tensors, one '
                        f'{shape} tensor per visual encoder, got '
                        f'{type(feats).__name__}.')
    if len(feats) != num_sets:
        raise ValueError(
            f'{owner} takes the features of {num_sets} visual encoder(s), '
            f'got {len(feats)} tensor(s).')
    shapes = [tuple(x.shape) for x in feats]
    if any(f.dim() != dims for f in feats):
        raise ValueError(f'{owner} takes {shape} tensors ({dims} dimensions), '
                         f'got shapes {shapes}.')
    if any(f.shape[:-1] != feats[0].shape[:-1] for f in feats):
        raise ValueError(f'{owner} takes {shape} tensors with the same '
                         f'leading sizes, got shapes {shapes}.')
    return tuple(feats)


@dataclass
class EncodedFeatures:
    """Raw (unnormalised) features of the samples of a split, or of the
    augmented views of the few-shot set.

    Attributes:
        feats: One ``(S, C_e)`` float tensor per visual encoder; row ``i``
            is the sample with ``sample_idx == i``.
        labels: ``(S, )`` int64 ground truth.
    """
    feats: Features
    labels: torch.Tensor

    def __post_init__(self) -> None:
        self.feats = check_features(self.feats, len(self.feats),
                                    'EncodedFeatures')
        if self.labels.dim() != 1 or len(self.labels) != len(self.feats[0]):
            raise ValueError(
                f'EncodedFeatures: labels {tuple(self.labels.shape)} do not '
                f'match features {tuple(self.feats[0].shape)}.')

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_sets(self) -> int:
        """Visual encoders the features come from."""
        return len(self.feats)

    def views(self, num_views: int) -> Features:
        """The features as ``(V, S, C_e)`` views, for rows ordered view-major
        (row ``v * S + s`` is view ``v`` of image ``s``)."""
        if len(self) % num_views:
            raise ValueError(f'{len(self)} features are not {num_views} '
                             'views of the same images.')
        return tuple(f.view(num_views, len(self) // num_views, -1)
                     for f in self.feats)

    def to(self, device: Any) -> 'EncodedFeatures':
        return EncodedFeatures(tuple(f.to(device) for f in self.feats),
                               self.labels.to(device))


def normalized(feats: Sequence[torch.Tensor]) -> Features:
    """Each tensor L2-normalised along its last dimension."""
    return tuple(torch.nn.functional.normalize(f.float(), dim=-1)
                 for f in feats)
