"""Export an adapted model (visual tower + cache head) to TorchScript."""
import os
import os.path as osp
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn


class AdaptedModelForExport(nn.Module):
    """``images (B, 3, H, W) -> logits (B, N)`` of a ``CLIPFewShotClassifier``.

    Runs ``model.extract_feat`` (visual tower, L2 normalisation) and
    ``model.head`` (zero-shot + cache logits at the searched
    hyperparameters), as ``model(inputs, mode='tensor')`` does.

    Args:
        model: The classifier, with its cache built or loaded.
        with_preprocess (bool): Also apply the model's data preprocessor's
            BGR-to-RGB swap and mean/std normalisation, so that the module
            takes raw ``0-255`` BGR float images (what the test pipeline
            packs) instead of preprocessed ones.
    """

    def __init__(self, model: nn.Module, with_preprocess: bool = False):
        super().__init__()
        self.model = model
        self.with_preprocess = bool(with_preprocess)
        pre = model.data_preprocessor
        self.to_rgb = bool(getattr(pre, 'to_rgb', False))
        # ClsDataPreprocessor has mean/std buffers only when it normalises.
        normalize = getattr(pre, 'mean', None) is not None
        if self.with_preprocess and getattr(pre, 'pad_size_divisor', 1) > 1:
            raise NotImplementedError(
                'with_preprocess does not pad (pad_size_divisor > 1).')
        if self.with_preprocess and normalize:
            self.register_buffer('mean', pre.mean.detach().clone().float())
            self.register_buffer('std', pre.std.detach().clone().float())
        else:
            self.mean = None
            self.std = None

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.with_preprocess:
            inputs = inputs.float()
            if self.to_rgb:
                inputs = inputs.flip(1)
            if self.mean is not None:
                inputs = (inputs - self.mean) / self.std
        feats = self.model.extract_feat(inputs)
        return self.model.head(feats)


def export_torchscript(model: nn.Module,
                       example_inputs: torch.Tensor,
                       path: Optional[Union[str, os.PathLike]] = None,
                       with_preprocess: bool = False,
                       freeze: bool = True,
                       check: bool = True,
                       atol: float = 1e-5) -> torch.jit.ScriptModule:
    """Trace ``images -> logits`` of an adapted model and save it.

    Args:
        model: A ``CLIPFewShotClassifier`` whose head holds a cache (e.g.
            ``TipAdapterInferencer(...).model``).
        example_inputs: A batch ``(B, 3, H, W)`` on the model's device,
            preprocessed (or raw 0-255 BGR with ``with_preprocess``). The
            exported module accepts any batch size and, for towers that
            allow it, the traced ``H, W`` only.
        path: Where to save the module (``torch.jit.save``); None: don't.
        with_preprocess: See :class:`AdaptedModelForExport`.
        freeze: ``torch.jit.freeze`` the traced module (weights, cache and
            hyperparameters become constants).
        check: Compare the exported module with the PyTorch model on
            ``example_inputs`` and raise if they differ by more than
            ``atol``.

    Returns:
        The (frozen) TorchScript module, also loadable with
        ``torch.jit.load(path)``.
    """
    from .inferencer import check_adapted_model
    check_adapted_model(model)
    if example_inputs.dim() != 4:
        raise ValueError('example_inputs must be images (B, 3, H, W), got '
                         f'shape {tuple(example_inputs.shape)}.')
    was_training = model.training
    model.eval()
    wrapper = AdaptedModelForExport(model, with_preprocess).eval()
    try:
        with torch.no_grad():
            expected = wrapper(example_inputs)
            traced = torch.jit.trace(
                wrapper, (example_inputs, ), check_trace=False)
            if freeze:
                traced = torch.jit.freeze(traced.eval())
            if check:
                found = traced(example_inputs)
                if not torch.allclose(found, expected, rtol=0, atol=atol):
                    diff = (found - expected).abs().max().item()
                    raise RuntimeError(
                        'The traced module differs from the model by up to '
                        f'{diff:.3g} (atol {atol}).')
    finally:
        model.train(was_training)
    if path is not None:
        path = str(path)
        if osp.dirname(path):
            os.makedirs(osp.dirname(path), exist_ok=True)
        torch.jit.save(traced, path)
    return traced


def default_input_shape(model: nn.Module) -> Tuple[int, int]:
    """``(H, W)`` the visual tower was built for (224 when unknown):
    open_clip's ``visual.image_size``, MMPretrain ViT's ``img_size`` or
    ModifiedResNet's ``input_size``."""
    backbone = model.backbone
    size = (getattr(getattr(backbone, 'visual', None), 'image_size', None)
            or getattr(backbone, 'img_size', None)
            or getattr(backbone, 'input_size', None) or 224)
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])
