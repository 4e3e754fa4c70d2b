"""Encoding a dataset with the frozen encoder, on one rank or many."""
import hashlib
from typing import Tuple

import torch
from mmengine.dist import all_gather_object, get_dist_info
from mmengine.utils import ProgressBar
from torch.utils.data import DataLoader

from ..structures import EncodedFeatures


@torch.no_grad()
def extract_features(model: torch.nn.Module,
                     dataloader: DataLoader) -> EncodedFeatures:
    """Raw visual features and labels of every sample of ``dataloader``.

    Each rank encodes its share; the shares are gathered on every rank,
    de-duplicated by ``sample_idx`` (``DefaultSampler`` pads the last ranks
    with repeated samples) and put in ``sample_idx`` order.

    Args:
        model: A :class:`CLIPFewShotClassifier` (unwrapped).
        dataloader: Yields packed samples carrying ``sample_idx``.

    Returns:
        One ``(S, C_e)`` float32 tensor per visual encoder and the labels
        ``(S, )`` int64, on the CPU, where ``S = len(dataloader.dataset)``.
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
    labels = torch.cat([s[1] for s in shards])[order][keep]
    feats = tuple(
        torch.cat([s[2][i] for s in shards])[order][keep]
        for i in range(len(shard[2])))
    return EncodedFeatures(feats, labels)


def dataset_fingerprint(dataset) -> Tuple[int, str]:
    """``(len, digest)`` of a dataset's image paths and labels."""
    digest = hashlib.sha256()
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        digest.update(f"{info.get('img_path')}|{info.get('gt_label')}\n"
                      .encode())
    return len(dataset), digest.hexdigest()[:16]
