"""Encoding a dataset with the frozen encoder, on one rank or many."""
import hashlib
import logging
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator, List, Tuple

import torch
from mmengine.dist import all_gather, get_dist_info
from mmengine.logging import print_log
from mmengine.utils import ProgressBar
from torch.utils.data import DataLoader

from ..structures import EncodedFeatures

#: ``few_shot_cfg.precision`` -> the dtype the encoders run in.
PRECISIONS = {
    'fp32': torch.float32,
    'fp16': torch.float16,
    'bf16': torch.bfloat16,
}


def precision_dtype(precision: str) -> torch.dtype:
    """The dtype of an encoding precision: ``'fp32'`` -> ``torch.float32``,
    ``'fp16'`` -> ``torch.float16``, ``'bf16'`` -> ``torch.bfloat16``.

    Raises:
        ValueError: naming ``few_shot_cfg.precision`` and the allowed
            values, for anything else.
    """
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f'few_shot_cfg.precision must be one of '
                         f'{list(PRECISIONS)}, got {precision!r}.')
    return PRECISIONS[precision]


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU if it has
    none)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device('cpu')


def encoding_context(precision: str, device: torch.device):
    """The context the encoders run in: nothing for ``'fp32'``, else
    ``torch.autocast`` on ``device``'s type with the precision's dtype.

    Raises:
        ValueError: for an unknown precision, or a half precision that
            autocast does not support on this device (e.g. fp16 on a CPU
            whose PyTorch lacks CPU fp16 autocast: use bf16 there).
    """
    dtype = precision_dtype(precision)
    if dtype == torch.float32:
        return nullcontext()
    device_type = torch.device(device).type
    supported = torch.amp.is_autocast_available(device_type)
    if supported and device_type == 'cuda' and dtype == torch.bfloat16:
        supported = torch.cuda.is_bf16_supported()
    if supported:
        # Older PyTorch builds warn and switch autocast off for a dtype the
        # device lacks; check that it really runs in ``dtype``.
        with torch.autocast(device_type, dtype=dtype):
            supported = (torch.is_autocast_enabled(device_type) and
                         torch.get_autocast_dtype(device_type) == dtype)
    if not supported:
        hint = (" Use few_shot_cfg.precision='bf16' on the CPU."
                if device_type == 'cpu' else
                " Use few_shot_cfg.precision='fp16' on this device."
                if dtype == torch.bfloat16 else '')
        raise ValueError(
            f'few_shot_cfg.precision={precision!r}: this PyTorch '
            f'({torch.__version__}) cannot autocast to {dtype} on '
            f'{device_type}.' + hint)
    if device_type == 'cpu' and dtype == torch.float16:
        print_log(
            "few_shot_cfg.precision='fp16' on the CPU: most CPUs have no "
            'fp16 arithmetic and PyTorch emulates it, many times slower '
            "than fp32 (docs/precision.md); 'bf16' is the CPU's half "
            'precision.',
            logger='current',
            level=logging.WARNING)
    return torch.autocast(device_type, dtype=dtype)


@contextmanager
def channels_last_encoders(model: torch.nn.Module,
                           enabled: bool) -> Iterator[None]:
    """Within the context, the 4-D weights of the model's encoders (conv
    towers: CLIP's ModifiedResNet, MMPretrain's ResNet; a ViT's patch
    embedding) are in ``torch.channels_last`` memory format; they are
    contiguous again afterwards. Values never change."""
    if not enabled:
        yield
        return
    encoders = getattr(model, 'encoders', None) or [model]
    for module in encoders:
        module.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for module in encoders:
            module.to(memory_format=torch.contiguous_format)


def _to_device(data: Any, device: torch.device) -> Any:
    """Tensors of ``data`` (a tensor, or a list/tuple of them) copied to
    ``device`` without waiting (``non_blocking``: asynchronous from pinned
    memory)."""
    if isinstance(data, torch.Tensor):
        return data.to(device, non_blocking=True)
    if isinstance(data, (list, tuple)):
        return type(data)(_to_device(d, device) for d in data)
    return data


def _gather(tensor: torch.Tensor, world_size: int) -> List[torch.Tensor]:
    """Every rank's ``tensor`` ``(n_r, ...)``, gathered on every rank with
    ``mmengine.dist.all_gather`` (on the device where the backend allows).
    Shards may differ in length: each is padded to the longest, and the
    padding is cut off again."""
    if world_size == 1:
        return [tensor]
    length = torch.tensor([len(tensor)], device=tensor.device)
    lengths = [int(n) for n in torch.cat(all_gather(length)).tolist()]
    longest = max(lengths)
    if len(tensor) < longest:
        tensor = torch.cat([
            tensor,
            tensor.new_zeros((longest - len(tensor), ) + tensor.shape[1:])
        ])
    return [t[:n] for t, n in zip(all_gather(tensor), lengths)]


@torch.no_grad()
def extract_features(model: torch.nn.Module,
                     dataloader: DataLoader,
                     precision: str = 'fp32',
                     channels_last: bool = False) -> EncodedFeatures:
    """Raw visual features and labels of every sample of ``dataloader``.

    Each rank encodes its share; the shares are gathered on every rank,
    de-duplicated by ``sample_idx`` (``DefaultSampler`` pads the last ranks
    with repeated samples) and put in ``sample_idx`` order.

    The loop never waits for the device: images are copied with
    ``non_blocking=True`` (asynchronous from a loader with
    ``pin_memory=True``), each batch's features stay on the device, and
    they are concatenated, gathered across ranks (on the device where the
    backend allows) and copied to the CPU once at the end. Labels and
    ``sample_idx`` are read from the data samples on the CPU.

    Args:
        model: A :class:`CLIPFewShotClassifier` (unwrapped).
        dataloader: Yields packed samples carrying ``sample_idx``.
        precision: ``'fp32'``, or ``'fp16'``/``'bf16'``: the encoders run
            under ``torch.autocast`` with that dtype on the model's device
            (see :func:`encoding_context`). Features are float32 whatever
            the precision.
        channels_last: Run the encoders' 4-D weights and the images in
            ``torch.channels_last`` memory format (faster convolutions on
            GPUs with tensor cores; harmless on a ViT).

    Returns:
        One ``(S, C_e)`` float32 tensor per visual encoder and the labels
        ``(S, )`` int64, on the CPU, where ``S = len(dataloader.dataset)``.
    """
    rank, world_size = get_dist_info()
    device = model_device(model)
    context = encoding_context(precision, device)
    size = len(dataloader.dataset)
    progress = ProgressBar(size) if rank == 0 else None
    indices, feats, labels = [], [], []
    with channels_last_encoders(model, channels_last):
        for data in dataloader:
            samples = data['data_samples']
            # Only the images go through the preprocessor: the data samples
            # stay on the CPU (a blocking copy of their labels would wait
            # for the device on every batch).
            inputs = model.data_preprocessor(
                dict(inputs=_to_device(data['inputs'], device)),
                False)['inputs']
            if channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with context:
                encoded = model.encode_image(inputs)
            feats.append(tuple(f.float() for f in encoded))
            indices.append(torch.tensor([s.sample_idx for s in samples]))
            labels.append(torch.cat([s.gt_label for s in samples]).cpu())
            if progress is not None:
                step = min(len(samples) * world_size,
                           size - progress.completed)
                if step > 0:  # repeated samples may come after the last
                    progress.update(step)
    if progress is not None:
        progress.file.write('\n')
    # One (n, 2) int64 tensor of (sample_idx, label) and one (n, sum C_e)
    # float32 tensor of the features per rank: two gathers.
    dims = [f.shape[-1] for f in feats[0]]
    meta = torch.stack(
        [torch.cat(indices).long(), torch.cat(labels).long()], dim=1)
    shard = torch.cat([torch.cat(f, dim=1) for f in feats])
    meta = torch.cat(_gather(meta, world_size)).cpu()
    gathered = torch.cat(_gather(shard, world_size)).cpu()
    index = meta[:, 0]
    order = torch.argsort(index, stable=True)
    index = index[order]
    keep = torch.ones_like(index, dtype=torch.bool)
    keep[1:] = index[1:] != index[:-1]
    index = index[keep]
    if not torch.equal(index, torch.arange(size)):
        raise RuntimeError(
            f'Gathered features cover {len(index)} distinct samples of '
            f'{size}; every sample must be encoded exactly once.')
    labels = meta[:, 1][order][keep]
    gathered = gathered[order][keep]
    feats = tuple(f.contiguous() for f in torch.split(gathered, dims, dim=1))
    return EncodedFeatures(feats, labels)


def dataset_fingerprint(dataset) -> Tuple[int, str]:
    """``(len, digest)`` of a dataset's image paths and labels."""
    digest = hashlib.sha256()
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        digest.update(f"{info.get('img_path')}|{info.get('gt_label')}\n"
                      .encode())
    return len(dataset), digest.hexdigest()[:16]
