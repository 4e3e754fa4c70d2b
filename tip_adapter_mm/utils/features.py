"""The saved-feature dicts' layout, shared by the engine and the datasets.

:func:`~tip_adapter_mm.engine.extract_features` writes ``labels`` and one
tensor per visual encoder under :data:`FEATURE_KEYS`; the hooks, the search
and :class:`CachedViewsDataset` read them back with :func:`feature_sets`.
"""
from typing import Dict, Sequence, Tuple, Union

import torch

#: Keys of the features of each visual encoder, in the order of
#: ``model.encode_image``'s outputs.
FEATURE_KEYS = ('feats', 'second_feats')


def feature_sets(data: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, ...]:
    """The features of a saved-feature dict, one tensor per encoder."""
    return tuple(data[key] for key in FEATURE_KEYS if key in data)


def one_or_tuple(
    feats: Sequence[torch.Tensor]
) -> Union[torch.Tensor, Tuple[torch.Tensor, ...]]:
    """A single encoder's features as the tensor itself, several as a tuple:
    the form heads, ``build_cache`` and the data preprocessor take."""
    return feats[0] if len(feats) == 1 else tuple(feats)
