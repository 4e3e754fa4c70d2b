"""Encoding a dataset with the frozen encoder, on one rank or many."""
import hashlib
from typing import Dict, Tuple

import torch
from mmengine.dist import all_gather_object, get_dist_info
from mmengine.utils import ProgressBar
from torch.utils.data import DataLoader

from ..utils.features import FEATURE_KEYS


@torch.no_grad()
def extract_features(model: torch.nn.Module,
                     dataloader: DataLoader) -> Dict[str, torch.Tensor]:
    """Raw visual features and labels of every sample of ``dataloader``.

    Each rank encodes its share; the shares are gathered on every rank,
    de-duplicated by ``sample_idx`` (``DefaultSampler`` pads the last ranks
    with repeated samples) and put in ``sample_idx`` order.

    Args:
        model: A :class:`CLIPFewShotClassifier` (unwrapped).
        dataloader: Yields packed samples carrying ``sample_idx``.

    Returns:
        ``feats`` ``(S, C)`` float32 and ``labels`` ``(S,)`` int64 on CPU,
        where ``S = len(dataloader.dataset)``; with a second visual encoder
        also ``second_feats`` ``(S, C2)``.
    """
    rank, world_size = get_dist_info()
    size = len(dataloader.dataset)
    progress = ProgressBar(size) if rank == 0 else None
    indices, feats, labels = [], [], []
    for data in dataloader:
        data = model.data_preprocessor(data, False)
        samples = data['data_samples']
        feats.append(tuple(f.cpu() for f in model.encode_image(
            data['inputs'])))
        indices.append(torch.tensor([s.sample_idx for s in samples]))
        labels.append(torch.cat([s.gt_label for s in samples]).cpu())
        if progress is not None:
            progress.update(
                min(len(samples) * world_size, size - progress.completed))
    if progress is not None:
        progress.file.write('\n')
    # (indices, labels, one feature tensor per encoder)
    shard = (torch.cat(indices), torch.cat(labels),
             tuple(torch.cat(f) for f in zip(*feats)))
    shards = all_gather_object(shard) if world_size > 1 else [shard]
    index = torch.cat([s[0] for s in shards])
    order = torch.argsort(index, stable=True)
    index = index[order]
    keep = torch.ones_like(index, dtype=torch.bool)
    keep[1:] = index[1:] != index[:-1]
    index = index[keep]
    if not torch.equal(index, torch.arange(size)):
        raise RuntimeError(
            f'Gathered features cover {len(index)} distinct samples of '
            f'{size}; every sample must be encoded exactly once.')
    out = dict(labels=torch.cat([s[1] for s in shards])[order][keep])
    for i, key in enumerate(FEATURE_KEYS[:len(shard[2])]):
        out[key] = torch.cat([s[2][i] for s in shards])[order][keep]
    return out


def dataset_fingerprint(dataset) -> Tuple[int, str]:
    """``(len, digest)`` of a dataset's image paths and labels."""
    digest = hashlib.sha256()
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        digest.update(f"{info.get('img_path')}|{info.get('gt_label')}\n"
                      .encode())
    return len(dataset), digest.hexdigest()[:16]
