"""An MMPretrain classifier for few-shot CLIP adaptation."""
import logging
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.logging import print_log

from mmpretrain.models.classifiers import ImageClassifier
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample
from ...datasets.class_names import resolve_prompt_names
from ...structures import Features, check_features, normalized
from ..heads import FewShotHead
from ..utils import build_zero_shot_weights, check_pretrained, get_templates

#: CLIP's normalisation, on the 0-255 scale of MMPretrain's preprocessor.
CLIP_MEAN = tuple(255 * m for m in (0.48145466, 0.4578275, 0.40821073))
CLIP_STD = tuple(255 * s for s in (0.26862954, 0.26130258, 0.27577711))


def _last_2d(outputs, name: str, neck: str) -> torch.Tensor:
    """The last output of an encoder, which must be ``(B, C)``."""
    feats = outputs[-1] if isinstance(outputs, (tuple, list)) else outputs
    if feats.dim() != 2:
        raise ValueError(
            f'{name} gives features of shape {tuple(feats.shape)}; the cache '
            'needs one vector per image (B, C). Pool them with a neck, e.g. '
            f"{neck}=dict(type='GlobalAveragePooling').")
    return feats.float()


@MODELS.register_module()
class CLIPFewShotClassifier(ImageClassifier):
    """Frozen visual encoder(s), L2-normalised features, a few-shot head.

    The visual encoder is ``backbone`` (e.g. ``OpenCLIPVisualBackbone``,
    MMPretrain's ``VisionTransformer`` or ``ModifiedResNet`` with converted
    CLIP weights, any MMPretrain backbone) followed by the optional
    ``neck`` (``CLIPProjection``, ``GlobalAveragePooling``); its last
    output must be ``(B, C)``. An optional ``second_backbone`` (+
    ``second_neck``) is a second encoder whose features feed a second cache
    (:class:`DualCacheTipAdapterHead`). Encoders are frozen: no gradient,
    always in eval mode (BatchNorm statistics never move).

    The head (a :class:`FewShotHead`) receives a tuple with one
    L2-normalised ``(B, C_e)`` tensor per encoder: ``(f, )``, or ``(f, f2)``
    with a second encoder (raw features if ``head.normalize_inputs`` is
    False). Heads with CLIP's zero-shot term (``head.uses_text``) get
    ``zero_shot_weights`` from :meth:`build_zero_shot_weights`, which
    builds ``text_encoder`` only for the time it takes; the others
    (:class:`CacheOnlyHead`, :class:`NCMHead`) need no text tower. A head
    that fine-tunes the tower's last projection (:class:`ProLIPHead`,
    ``head.uses_visual_projection``) takes pre-projection features and gets
    that projection from :meth:`visual_projection` along with them. A
    head that learns prompts in the text tower (:class:`CoOpHead`,
    ``head.uses_text_tower``) keeps that tower and the class names
    (``head.set_text_tower``). A head that trains inside the image tower
    (VPT, MaPLe, CLIP-LoRA: ``head.uses_image_tower``) is handed
    ``OpenCLIPVisualBackbone``'s open_clip tower (``head.set_image_tower``)
    and encodes the images itself (``head.encode_images``), with
    gradients while training; its features are never stored.

    Args:
        backbone (dict): Visual encoder.
        head (dict): A cache-model head, e.g. ``TipAdapterHead``.
        neck (dict, optional): After ``backbone``.
        text_encoder (dict, optional): e.g. ``OpenCLIPTextEncoder`` of the
            same CLIP model. Needed by heads with a zero-shot term.
        templates (str | list[str]): A name in ``PROMPT_TEMPLATES`` or a
            list of prompt templates.
        class_names (list[str] | dict | str, optional): The names to prompt
            with, separate from the dataset's class names (the folder names
            of a folder dataset), which always give the label order. A list
            names every class in label order; a mapping ``{class name:
            prompt name}`` renames some; a string is the path of a text
            file with one prompt name per line. By default the dataset's
            names, without numeric prefixes like ``00_`` when every name
            has one, or ``<data_root>/classes.txt`` of the few-shot set if
            that file exists (:meth:`prompt_names`).
        use_model_logit_scale (bool): Scale zero-shot logits by the model's
            ``logit_scale.exp()`` instead of the head's fixed 100.
        second_backbone (dict, optional): Second visual encoder, any
            MMPretrain backbone (weights through its ``init_cfg``).
        second_neck (dict, optional): After ``second_backbone``.
        second_mean, second_std (sequence of 3 floats, optional): The
            normalisation the second encoder was trained with (0-255 scale,
            as ``data_preprocessor``'s); the images normalised by
            ``data_preprocessor`` are re-normalised to it. Default: the
            second encoder sees the same input as the first.
        data_preprocessor (dict, optional): Defaults to
            :class:`FeatureOrImageDataPreprocessor` with CLIP's mean and
            std, BGR to RGB.

    :meth:`forward` takes either preprocessed images ``inputs`` ``(B, 3, H,
    W)``, which the encoders encode, or ``feats``: features these encoders
    encoded earlier (stored features, Tip-Adapter-F's cached views), one
    raw ``(B, C_e)`` tensor per encoder, which skip them. The two are
    separate arguments; nothing is told apart by its shape.
    """

    def __init__(self,
                 backbone: dict,
                 head: dict,
                 neck: Optional[dict] = None,
                 text_encoder: Optional[dict] = None,
                 templates: Union[str, Sequence[str]] = 'default',
                 class_names: Union[None, str, Sequence[str],
                                    Mapping[str, str]] = None,
                 use_model_logit_scale: bool = False,
                 second_backbone: Optional[dict] = None,
                 second_neck: Optional[dict] = None,
                 second_mean: Optional[Sequence[float]] = None,
                 second_std: Optional[Sequence[float]] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        if data_preprocessor is None:
            data_preprocessor = dict(
                type='FeatureOrImageDataPreprocessor',
                mean=CLIP_MEAN,
                std=CLIP_STD,
                to_rgb=True)
        super().__init__(
            backbone=backbone,
            neck=neck,
            head=head,
            data_preprocessor=data_preprocessor,
            init_cfg=init_cfg)
        self.text_encoder_cfg = text_encoder
        self.templates = get_templates(templates)
        if isinstance(class_names, Mapping):
            class_names = dict(class_names)
        elif class_names is not None and not isinstance(class_names, str):
            class_names = tuple(class_names)
        self.class_names = class_names or None
        self.use_model_logit_scale = use_model_logit_scale
        self.second_backbone = (MODELS.build(second_backbone)
                                if second_backbone else None)
        self.second_neck = (MODELS.build(second_neck)
                            if second_neck else None)
        if second_neck and not second_backbone:
            raise ValueError('model.second_neck is set but '
                             'model.second_backbone is not.')
        if (second_mean is None) != (second_std is None):
            raise ValueError('Set both model.second_mean and '
                             'model.second_std, or neither.')
        if second_mean is not None:
            if getattr(self.data_preprocessor, 'mean', None) is None:
                raise ValueError(
                    'model.second_mean/second_std re-normalise the images '
                    'that data_preprocessor normalised, but it has no mean '
                    'and std.')
            for name, value in (('second_mean', second_mean),
                                ('second_std', second_std)):
                if len(value) != 3:
                    raise ValueError(f'model.{name} needs 3 values (RGB), '
                                     f'got {value}.')
            self.register_buffer(
                'second_mean',
                torch.tensor(second_mean, dtype=torch.float32).view(3, 1, 1),
                persistent=False)
            self.register_buffer(
                'second_std',
                torch.tensor(second_std, dtype=torch.float32).view(3, 1, 1),
                persistent=False)
        else:
            self.second_mean = self.second_std = None
        if not isinstance(self.head, FewShotHead):
            raise TypeError(
                f'CLIPFewShotClassifier needs a few-shot head (a subclass of '
                f'FewShotHead, e.g. TipAdapterHead), got '
                f'{type(self.head).__name__}.')
        wanted = self.head.num_feature_sets
        if wanted != self.num_feature_sets:
            raise ValueError(
                f'{type(self.head).__name__} takes features of {wanted} '
                f'visual encoder(s) but the model has '
                f'{self.num_feature_sets}: '
                + ('set model.second_backbone.' if wanted > 1 else
                   'remove model.second_backbone, or use '
                   'DualCacheTipAdapterHead.'))
        for encoder in self.encoders:
            encoder.requires_grad_(False)
            encoder.eval()
        if self.head.uses_visual_projection:
            self.visual_projection()  # fails now on a tower without one
        if self.head.uses_image_tower:
            self.head.set_image_tower(self._image_tower())

    # -- visual encoders -----------------------------------------------------
    def _image_tower(self) -> nn.Module:
        """open_clip's image tower, for a head that trains inside it."""
        name = type(self.head).__name__
        visual = getattr(self.backbone, 'visual', None)
        if visual is None or getattr(self.backbone, 'output',
                                     'projected') != 'projected':
            raise ValueError(
                f'{name} trains inside the image tower: model.backbone must '
                "be OpenCLIPVisualBackbone(output='projected'), got "
                f'{type(self.backbone).__name__}.')
        if self.with_neck or self.second_backbone is not None:
            raise ValueError(
                f'{name} trains inside the image tower and gives the image '
                'features itself: remove model.neck and '
                'model.second_backbone.')
        return visual

    @property
    def encoders(self) -> List[nn.Module]:
        """The frozen modules: backbone(s) and neck(s)."""
        return [
            m for m in (self.backbone, getattr(self, 'neck', None),
                        self.second_backbone, self.second_neck)
            if m is not None
        ]

    @property
    def num_feature_sets(self) -> int:
        """Visual encoders, hence feature tensors per image (1 or 2)."""
        return 1 if self.second_backbone is None else 2

    def train(self, mode: bool = True) -> 'CLIPFewShotClassifier':
        """Train the head only; the encoders stay in eval mode."""
        super().train(mode)
        for encoder in self.encoders:
            encoder.eval()
        return self

    def init_weights(self) -> None:
        """MMEngine's initialisation, then a check that every ``Pretrained``
        ``init_cfg`` of an encoder covered all its weights with the right
        shapes (MMEngine only warns). Once: a model already initialised is
        left as it is (the runner may ask again before training)."""
        if self.is_init:
            return
        super().init_weights()
        for name, module in (('backbone', self.backbone),
                             ('neck', getattr(self, 'neck', None)),
                             ('second_backbone', self.second_backbone),
                             ('second_neck', self.second_neck)):
            if module is not None:
                check_pretrained(module, getattr(module, 'init_cfg', None),
                                 f'model.{name}')

    def _second_input(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.second_mean is None:
            return inputs
        pre = self.data_preprocessor
        inputs = inputs * pre.std + pre.mean
        return (inputs - self.second_mean) / self.second_std

    def encode_image(self, inputs: torch.Tensor) -> Features:
        """Raw visual features of preprocessed images ``(B, 3, H, W)``: one
        ``(B, C_e)`` tensor per encoder."""
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
            got = (tuple(inputs.shape) if isinstance(inputs, torch.Tensor)
                   else type(inputs).__name__)
            raise ValueError(
                f'encode_image takes preprocessed images (B, 3, H, W), got '
                f'{got}; features already encoded go to forward(feats=...).')
        if self.head.uses_image_tower:
            # The head's parameters are inside the tower: gradients flow
            # when the caller computes them (training).
            return (self.head.encode_images(inputs).float(), )
        with torch.no_grad():
            x = self.backbone(inputs)
            if self.with_neck:
                x = self.neck(x)
            feats = (_last_2d(x, 'model.backbone', 'model.neck'), )
            if self.second_backbone is not None:
                x2 = self.second_backbone(self._second_input(inputs))
                if self.second_neck is not None:
                    x2 = self.second_neck(x2)
                feats += (_last_2d(x2, 'model.second_backbone',
                                   'model.second_neck'), )
        return feats

    def extract_feat(self, inputs: torch.Tensor,
                     stage: str = 'neck') -> Features:
        """L2-normalised visual features of preprocessed images: one ``(B,
        C_e)`` tensor per encoder."""
        return normalized(self.encode_image(inputs))

    def normalize_features(self, feats: Features) -> Features:
        """Check raw features from these encoders (one ``(B, C_e)`` tensor
        per encoder) and L2-normalise them, unless the head takes raw
        features (``head.normalize_inputs`` False)."""
        feats = check_features(feats, self.num_feature_sets,
                               'CLIPFewShotClassifier(feats=...)')
        return normalized(feats) if self.head.normalize_inputs else feats

    def forward(self,
                inputs: Optional[torch.Tensor] = None,
                data_samples: Optional[List[DataSample]] = None,
                mode: str = 'tensor',
                feats: Optional[Features] = None):
        """MMPretrain's three modes, from images or from features.

        Args:
            inputs: Preprocessed images ``(B, 3, H, W)``.
            data_samples: As :class:`ImageClassifier`.
            mode: ``'tensor'`` (logits ``(B, N)``), ``'loss'`` or
                ``'predict'``.
            feats: Instead of ``inputs``: raw features already encoded by
                these encoders, one ``(B, C_e)`` tensor per encoder.
        """
        if (inputs is None) == (feats is None):
            raise ValueError('CLIPFewShotClassifier.forward takes images '
                             '(inputs=...) or encoded features (feats=...), '
                             'exactly one of them.')
        feats = self.normalize_features(
            self.encode_image(inputs) if feats is None else feats)
        if mode == 'tensor':
            return self.head(feats)
        if mode == 'loss':
            return self.head.loss(feats, data_samples)
        if mode == 'predict':
            return self.head.predict(feats, data_samples)
        raise RuntimeError(f'Invalid mode "{mode}".')

    @property
    def needs_zero_shot_weights(self) -> bool:
        """Whether the head has a zero-shot term still without weights."""
        return (self.head.uses_text
                and not self.head.has_zero_shot_weights)

    def prompt_names(self,
                     dataset_classes: Sequence[str],
                     classes_file: Optional[str] = None,
                     log: bool = True) -> Tuple[str, ...]:
        """The names prompted for the dataset's classes (label order):
        ``model.class_names`` (a list, a mapping, a file), else
        ``classes_file`` when it exists, else the dataset's names without
        a numeric prefix that every one has
        (:func:`~tip_adapter_mm.datasets.class_names.resolve_prompt_names`).
        ValueError shows the first differences of an override that breaks
        the label order or names unknown classes."""
        names, messages = resolve_prompt_names(
            dataset_classes, self.class_names, 'model.class_names',
            classes_file)
        for message in messages if log else ():
            warning = message.startswith('WARNING: ')
            print_log(message[len('WARNING: '):] if warning else message,
                      logger='current',
                      level=logging.WARNING if warning else logging.INFO)
        return names

    @torch.no_grad()
    def build_zero_shot_weights(
            self,
            dataset_classes: Sequence[str],
            reset_projection: bool = True,
            prompt_names: Optional[Sequence[str]] = None) -> None:
        """Encode ``prompt name x template`` prompts into the head's
        ``zero_shot_weights`` ``(C, N)``.

        Args:
            dataset_classes: The class names of the few-shot dataset, in
                label order (``N`` of them).
            reset_projection: Give a head that starts from the visual
                tower's last projection (ProLIP) that projection. False
                when a trained head is re-prompted (it keeps its own).
            prompt_names: The ``N`` names to prompt with; default
                :meth:`prompt_names` of ``dataset_classes``.
        """
        if prompt_names is None:
            prompt_names = self.prompt_names(dataset_classes)
        prompt_names = tuple(prompt_names)
        if len(prompt_names) != len(dataset_classes):
            raise ValueError(
                f'{len(prompt_names)} prompt names for '
                f'{len(dataset_classes)} dataset classes.')
        if len(dataset_classes) != self.head.num_classes:
            raise ValueError(
                f'The dataset has {len(dataset_classes)} classes but '
                f'model.head.num_classes is {self.head.num_classes}.')
        if self.text_encoder_cfg is None:
            raise ValueError(
                f'{type(self.head).__name__} needs zero-shot weights: set '
                'model.text_encoder (e.g. OpenCLIPTextEncoder).')
        encoder = MODELS.build(self.text_encoder_cfg)
        encoder.to(self.head.is_searched.device)
        # Heads that train from the raw text prototypes (TaskRes, CLAP)
        # also take the raw features' norms.
        raw_norms = hasattr(self.head, 'set_text_norms')
        weights = build_zero_shot_weights(encoder, prompt_names,
                                          self.templates, raw_norms)
        if raw_norms:
            weights, norms = weights
            self.head.set_text_norms(norms)
        self.head.set_zero_shot_weights(weights)
        if self.use_model_logit_scale:
            self.head.clip_logit_scale.fill_(encoder.logit_scale)
        if getattr(self.head, 'uses_text_tower', False):
            # CoOp learns prompts inside the (frozen) text tower: the head
            # keeps the tower, its tokenizer and the class names.
            self.head.set_text_tower(encoder.clip, encoder.tokenizer,
                                     prompt_names)
        del encoder
        if reset_projection:
            self.give_head_visual_projection()

    # -- the visual tower's last projection (ProLIP) -------------------------
    def visual_projection(
            self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The visual tower's last projection, which the encoded features
        have not gone through: ``(weight (D_pre, D), bias (D, ) or None)``,
        so that ``features @ weight + bias`` is CLIP's image embedding.

        The module that ends the tower gives it (``visual_projection()``):
        ``model.neck`` when there is one, else ``model.backbone``; e.g.
        ``OpenCLIPVisualBackbone(output='pre_projection')``,
        ``PreProjectionModifiedResNet``, or ``VisionTransformer`` +
        ``CLIPPreProjection``. ValueError names the module otherwise.
        """
        neck = getattr(self, 'neck', None)
        key, module = (('model.neck', neck) if neck is not None else
                       ('model.backbone', self.backbone))
        get = getattr(module, 'visual_projection', None)
        projection = get() if callable(get) else None
        if projection is None:
            raise ValueError(
                f'{type(self.head).__name__} needs the visual tower\'s last '
                f'projection and features from before it, but {key} '
                f'({type(module).__name__}) has no known projection left to '
                'apply. Use a pre-projection tower: model.backbone='
                "OpenCLIPVisualBackbone(..., output='pre_projection') (open_"
                'clip RN and ViT), PreProjectionModifiedResNet (MMPretrain\'s'
                ' CLIP RN), or VisionTransformer with model.neck='
                'CLIPPreProjection (MMPretrain\'s CLIP ViT).')
        return projection

    def give_head_visual_projection(self) -> None:
        """Give a head that starts from the tower's last projection
        (``head.uses_visual_projection``, e.g. :class:`ProLIPHead`) that
        projection: ``head.set_visual_projection(weight, bias)``. Called by
        :meth:`build_zero_shot_weights`, before the head is fitted: the
        projection and the text classifier together are the zero-shot model
        such a head starts from."""
        if self.head.uses_visual_projection:
            self.head.set_visual_projection(*self.visual_projection())
