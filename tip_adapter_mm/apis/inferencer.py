"""Predict with a saved adapted model, as MMPretrain's inferencers do."""
import os
import os.path as osp
from math import ceil
from typing import Callable, List, Optional, Sequence, Union

import numpy as np
import torch
from mmengine.config import Config
from mmengine.dataset import Compose, default_collate
from mmengine.utils import import_modules_from_strings

from mmpretrain.apis import ImageClassificationInferencer
from mmpretrain.apis.base import InputType, ModelType
from mmpretrain.registry import TRANSFORMS
from mmpretrain.utils import track

#: Transforms of a test pipeline that read the image from ``img_path``.
LOADING_TRANSFORMS = ('LoadImageFromFile', )


def _is_loading(transform: dict) -> bool:
    return transform.get('type') in LOADING_TRANSFORMS


def check_adapted_model(model: torch.nn.Module,
                        checkpoint: Optional[str] = None) -> None:
    """Raise a clear error unless ``model``'s head holds what inference
    needs: its fit on the few-shot set (and zero-shot weights for heads
    that use them).

    Args:
        model: A ``CLIPFewShotClassifier`` after its checkpoint was loaded.
        checkpoint: The checkpoint's path, for the message.
    """
    head = getattr(model, 'head', None)
    where = (f'The checkpoint {checkpoint!r}'
             if checkpoint else 'No checkpoint was given, so the model')
    name = type(head).__name__
    hint = ('Predictions need an adapted model: `tools/train.py CONFIG` '
            '(Tip-Adapter-F) saves work_dirs/<config>/final_searched.pth; '
            'for training-free Tip-Adapter run `tools/test.py CONFIG '
            '--save-model PATH`.')
    if head is None or not hasattr(head, 'is_fitted'):
        raise RuntimeError(f'{type(model).__name__} has no few-shot head '
                           f'(got {name}); TipAdapterInferencer is for '
                           'CLIPFewShotClassifier with a FewShotHead.')
    if not head.is_fitted:
        raise RuntimeError(
            f'{where} holds no fitted {name} (no cache or statistics of the '
            'few-shot set): it was saved before BuildCacheHook fitted the '
            f'head, or is not a checkpoint of this config. {hint}')
    if getattr(model, 'needs_zero_shot_weights', False):
        raise RuntimeError(f'{where} holds no zero-shot weights for {name}. '
                           f'{hint}')
    # Tensors whose last dimension is the number of classes.
    for what, tensor in (('cache values',
                          getattr(getattr(head, 'cache', None), 'values',
                                  None)),
                         ('zero-shot weights',
                          getattr(head, 'zero_shot_weights', None))):
        if tensor is not None and tensor.shape[-1] != head.num_classes:
            raise RuntimeError(
                f'{where} holds {what} for {tensor.shape[-1]} classes but '
                f'the config says model.head.num_classes={head.num_classes}.')


class TipAdapterInferencer(ImageClassificationInferencer):
    """Classify images with an adapted few-shot CLIP model.

    MMPretrain's :class:`ImageClassificationInferencer`, for a config and
    checkpoint of this plugin: the model is built from the config's
    ``model`` (its ``custom_imports`` are honoured) by MMPretrain's
    ``MODELS`` registry, the frozen CLIP tower from its ``pretrained``, and
    the checkpoint (cache keys and values, zero-shot weights, searched
    hyperparameters, class names) is loaded with MMEngine's
    ``load_checkpoint``.

    Images go through the config's test pipeline
    (``test_dataloader.dataset.pipeline``) and the model's data
    preprocessor, exactly as in ``tools/test.py``:

    - a path (``str`` or ``os.PathLike``) is loaded by the pipeline's own
      ``LoadImageFromFile``;
    - a ``numpy`` array must be ``(H, W, 3)`` **BGR** (as ``mmcv.imread``
      and ``cv2.imread`` return it; RGB arrays from PIL need
      ``img[..., ::-1]``), ``uint8`` 0-255, or ``(H, W)`` grey; it replaces
      the loading step.

    Args:
        model (str | Config): Config file path or config.
        pretrained (str | bool): Checkpoint path. ``True`` uses the config's
            ``load_from``. A checkpoint without a cache is an error.
        device (str, optional): e.g. ``'cpu'``, ``'cuda:0'``. Default: CUDA
            when available, else CPU.
        classes (list[str], optional): Class names; default the checkpoint's
            ``meta.dataset_meta.classes``.

    Example:
        >>> inferencer = TipAdapterInferencer(
        ...     'configs/tip_imagenet_16shot.py',
        ...     pretrained='work_dirs/tip_imagenet_16shot/tip.pth',
        ...     device='cpu')
        >>> inferencer(['a.jpg', 'b.jpg'], batch_size=2)
        [{'pred_scores': array([...]), 'pred_label': 65,
          'pred_score': 0.66, 'pred_class': 'sea snake'}, ...]

    Each result has ``pred_label`` (int), ``pred_score`` (float, softmax
    probability of that label), ``pred_scores`` (``(N,)`` array over all
    classes) and ``pred_class`` (when class names are known).
    """

    def __init__(self,
                 model: ModelType,
                 pretrained: Union[bool, str] = True,
                 device: Union[str, torch.device, None] = None,
                 classes: Optional[Sequence[str]] = None,
                 **kwargs) -> None:
        if isinstance(model, (str, os.PathLike)):
            model = str(model)
            if not osp.isfile(model):
                raise FileNotFoundError(f'Config file {model!r} not found.')
            # Config.fromfile imports the config's custom_imports.
            model = Config.fromfile(model)
        if not isinstance(model, Config):
            raise TypeError('TipAdapterInferencer takes a config path or a '
                            f'Config, got {type(model).__name__}.')
        if model.get('custom_imports'):
            # Config.fromfile did it already; a Config built otherwise not.
            import_modules_from_strings(**model.custom_imports)
        if pretrained is True:
            pretrained = model.get('load_from') or False
        if isinstance(pretrained, (str, os.PathLike)):
            pretrained = str(pretrained)
            if not osp.isfile(pretrained):
                raise FileNotFoundError(
                    f'Checkpoint {pretrained!r} does not exist.')
        if device is None:
            device = 'cuda' if torch.cuda.is_available() else 'cpu'
        super().__init__(
            model=model,
            pretrained=pretrained,
            device=device,
            classes=classes,
            **kwargs)
        check_adapted_model(self.model, pretrained or None)
        if self.classes is None:
            # A checkpoint without meta.dataset_meta: config's class names.
            self.classes = getattr(self.model, 'class_names', None)
        if self.classes is not None:
            self.classes = list(self.classes)
            if len(self.classes) != self.model.head.num_classes:
                raise ValueError(
                    f'{len(self.classes)} class names for a head with '
                    f'{self.model.head.num_classes} classes.')

    # -- pipeline ------------------------------------------------------------
    def _init_pipeline(self, cfg: Config) -> Callable:
        """The test pipeline for paths; without its loading step (and with
        :meth:`_load_array` instead) for arrays."""
        transforms = list(cfg.test_dataloader.dataset.pipeline)
        if not transforms or not _is_loading(transforms[0]):
            types = [t.get('type') for t in transforms]
            raise ValueError('test_dataloader.dataset.pipeline must start '
                             f'with LoadImageFromFile, got {types}.')
        self._load_cfg = dict(transforms[0])
        self.array_pipeline = Compose(
            [TRANSFORMS.build(t) for t in transforms if not _is_loading(t)])
        return Compose([TRANSFORMS.build(t) for t in transforms])

    def _load_array(self, img: np.ndarray) -> dict:
        """What ``LoadImageFromFile`` returns, for an array in memory."""
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=-1)
        if img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError('An image array must be (H, W, 3) BGR or '
                             f'(H, W) grey, got shape {img.shape}.')
        if self._load_cfg.get('to_float32', False):
            img = img.astype(np.float32)
        return dict(img=img, img_shape=img.shape[:2], ori_shape=img.shape[:2])

    def _process_one(self, input_: InputType) -> dict:
        if isinstance(input_, (str, os.PathLike)):
            path = str(input_)
            if '://' not in path and not osp.isfile(path):
                raise FileNotFoundError(f'Image {path!r} does not exist.')
            return self.pipeline(dict(img_path=path))
        if isinstance(input_, np.ndarray):
            return self.array_pipeline(self._load_array(input_))
        raise TypeError('Inputs are image paths or numpy arrays, got '
                        f'{type(input_).__name__}.')

    def preprocess(self, inputs: List[InputType], batch_size: int = 1):
        chunked_data = self._get_chunk_data(
            map(self._process_one, inputs), batch_size)
        yield from map(default_collate, chunked_data)

    # -- call ----------------------------------------------------------------
    def __call__(self,
                 inputs: InputType,
                 return_datasamples: bool = False,
                 batch_size: int = 1,
                 show_progress: bool = False,
                 **kwargs) -> list:
        """Predict.

        Args:
            inputs (str | Path | array | list): An image path, an array, a
                directory (all files in it), or a list of them.
            return_datasamples (bool): Return MMPretrain ``DataSample``\\ s
                instead of dicts.
            batch_size (int): Images per forward pass.
            show_progress (bool): Show MMPretrain's progress bar.
            **kwargs: As :class:`ImageClassificationInferencer` (``show``,
                ``show_dir``, ...).

        Returns:
            list[dict]: One per image, in input order.
        """
        if int(batch_size) < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
        (preprocess_kwargs, forward_kwargs, visualize_kwargs,
         postprocess_kwargs) = self._dispatch_kwargs(**kwargs)
        if isinstance(inputs, os.PathLike):
            inputs = str(inputs)
        ori_inputs = self._inputs_to_list(inputs)
        batches = self.preprocess(
            ori_inputs, batch_size=int(batch_size), **preprocess_kwargs)
        if show_progress:
            batches = track(batches, 'Inference',
                            total=ceil(len(ori_inputs) / batch_size))
        preds = []
        for data in batches:
            preds.extend(self.forward(data, **forward_kwargs))
        visualization = self.visualize(ori_inputs, preds, **visualize_kwargs)
        return self.postprocess(preds, visualization, return_datasamples,
                                **postprocess_kwargs)

    @staticmethod
    def list_models(pattern: Optional[str] = None):
        raise NotImplementedError(
            'TipAdapterInferencer takes a config file and a checkpoint; it '
            'has no model zoo names.')
