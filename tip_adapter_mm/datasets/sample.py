"""Loading one sample of an MMEngine dataset under a new index."""
from typing import Any, Optional

from mmengine.dataset import BaseDataset


def check_mmengine_dataset(dataset: Any, wrapper: str) -> BaseDataset:
    """Raise a clear error unless ``dataset`` is an MMEngine dataset."""
    if not isinstance(dataset, BaseDataset):
        raise TypeError(
            f'{wrapper} wraps an MMEngine/MMPretrain dataset (a subclass of '
            f'mmengine.dataset.BaseDataset), got {type(dataset).__name__}.')
    dataset.full_init()
    return dataset


def load_sample(dataset: BaseDataset,
                index: int,
                sample_idx: Optional[int] = None) -> dict:
    """Run ``dataset``'s pipeline on its ``index``-th item.

    ``sample_idx`` (stored in the data sample's metainfo by ``PackInputs``)
    is replaced by the wrapper's own index so that features gathered across
    ranks can be put back in order. A sample that fails to load raises an
    error naming the file instead of being silently replaced by another
    (MMEngine's ``BaseDataset.__getitem__`` re-draws a random index).
    """
    info = dataset.get_data_info(index)
    if sample_idx is not None:
        info['sample_idx'] = sample_idx
    try:
        data = dataset.pipeline(info)
    except Exception as err:
        path = info.get('img_path', f'<sample {index}>')
        raise RuntimeError(
            f'Could not load or transform image {path!r} (index {index} of '
            f'{type(dataset).__name__}): {type(err).__name__}: {err}. '
            'Expected a readable image file.') from err
    if data is None:
        path = info.get('img_path', f'<sample {index}>')
        raise RuntimeError(
            f'The pipeline returned no data for image {path!r} (index '
            f'{index}); the file is empty or unreadable.')
    return data
