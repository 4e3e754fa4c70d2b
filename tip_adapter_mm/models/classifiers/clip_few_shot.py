"""An MMPretrain classifier for few-shot CLIP adaptation."""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from mmpretrain.models.classifiers import ImageClassifier
from mmpretrain.registry import MODELS
from ...datasets.class_names import check_class_names
from ...datasets.templates import get_templates
from ..utils import build_zero_shot_weights

#: CLIP's normalisation, on the 0-255 scale of MMPretrain's preprocessor.
CLIP_MEAN = tuple(255 * m for m in (0.48145466, 0.4578275, 0.40821073))
CLIP_STD = tuple(255 * s for s in (0.26862954, 0.26130258, 0.27577711))


@MODELS.register_module()
class CLIPFewShotClassifier(ImageClassifier):
    """Frozen visual encoder, L2-normalised features, a cache-model head.

    The head receives ``(F.normalize(backbone(x)[-1]),)``. Heads that use
    CLIP's zero-shot classifier (``set_zero_shot_weights``) get it from
    :meth:`build_zero_shot_weights`, which builds ``text_encoder`` only for
    the time it takes.

    Args:
        backbone (dict): Visual encoder, e.g. ``OpenCLIPVisualBackbone``.
        head (dict): A cache-model head, e.g. ``TipAdapterHead``.
        text_encoder (dict, optional): e.g. ``OpenCLIPTextEncoder`` of the
            same open_clip model. Needed by heads with a zero-shot term.
        templates (str | list[str]): A name in ``PROMPT_TEMPLATES`` or a
            list of prompt templates.
        class_names (list[str], optional): Names to prompt with; by default
            the dataset's. When given, they must equal the dataset's.
        use_model_logit_scale (bool): Scale zero-shot logits by the model's
            ``logit_scale.exp()`` instead of the head's fixed 100.
        data_preprocessor (dict, optional): Defaults to
            :class:`FeatureOrImageDataPreprocessor` with CLIP's mean and
            std, BGR to RGB.

    Inputs are images ``(B, 3, H, W)``, or raw features ``(B, C)`` already
    encoded by this backbone (Tip-Adapter-F training on cached views), which
    skip the backbone.
    """

    def __init__(self,
                 backbone: dict,
                 head: dict,
                 text_encoder: Optional[dict] = None,
                 templates: Union[str, Sequence[str]] = 'default',
                 class_names: Optional[Sequence[str]] = None,
                 use_model_logit_scale: bool = False,
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
            head=head,
            data_preprocessor=data_preprocessor,
            init_cfg=init_cfg)
        self.text_encoder_cfg = text_encoder
        self.templates = get_templates(templates)
        self.class_names = tuple(class_names) if class_names else None
        self.use_model_logit_scale = use_model_logit_scale

    def encode_image(self, inputs: torch.Tensor) -> torch.Tensor:
        """Raw visual features ``(B, C)`` of preprocessed images, or the
        features themselves when ``inputs`` is already ``(B, C)``."""
        if inputs.dim() == 2:
            return inputs.float()
        with torch.no_grad():
            return self.backbone(inputs)[-1].float()

    def extract_feat(self, inputs: torch.Tensor,
                     stage: str = 'neck') -> Tuple[torch.Tensor]:
        """L2-normalised visual features, as a 1-tuple of ``(B, C)``."""
        return (F.normalize(self.encode_image(inputs), dim=-1), )

    @property
    def needs_zero_shot_weights(self) -> bool:
        return (hasattr(self.head, 'set_zero_shot_weights')
                and not self.head.has_zero_shot_weights)

    @torch.no_grad()
    def build_zero_shot_weights(self, dataset_classes: Sequence[str]) -> None:
        """Encode ``class name x template`` prompts into the head's
        ``zero_shot_weights`` ``(C, N)``.

        Args:
            dataset_classes: The class names of the few-shot dataset, in
                label order.
        """
        if self.class_names is not None:
            check_class_names(self.class_names, dataset_classes,
                              'model.class_names in the config',
                              'the few-shot dataset')
        if len(dataset_classes) != self.head.num_classes:
            raise ValueError(
                f'The dataset has {len(dataset_classes)} classes but '
                f'model.head.num_classes is {self.head.num_classes}.')
        if self.text_encoder_cfg is None:
            raise ValueError(
                f'{type(self.head).__name__} needs zero-shot weights: set '
                'model.text_encoder (e.g. OpenCLIPTextEncoder).')
        encoder = MODELS.build(self.text_encoder_cfg)
        encoder.to(self.head.cache_values.device)
        weights = build_zero_shot_weights(encoder, dataset_classes,
                                          self.templates)
        self.head.set_zero_shot_weights(weights)
        if self.use_model_logit_scale:
            self.head.clip_logit_scale.fill_(encoder.logit_scale)
        del encoder
