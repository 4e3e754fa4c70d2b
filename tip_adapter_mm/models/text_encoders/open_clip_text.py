"""The text tower of an open_clip model, to build zero-shot weights."""
from typing import List, Optional, Sequence

import open_clip
import torch
from mmengine.model import BaseModule

from mmpretrain.registry import MODELS
from ..utils import create_open_clip_model


@MODELS.register_module()
class OpenCLIPTextEncoder(BaseModule):
    """Frozen text tower of an open_clip model, with its tokenizer.

    Built only while zero-shot weights are computed, then released (see
    :meth:`CLIPFewShotClassifier.build_zero_shot_weights`).

    Args:
        model_name (str): open_clip architecture, e.g. 'RN50'.
        pretrained (str, optional): open_clip tag or local checkpoint path.
        model_config_file (str, optional): JSON architecture file.
        cache_dir (str, optional): open_clip's download directory.
        batch_size (int): Prompts encoded per forward pass.
    """

    def __init__(self,
                 model_name: str,
                 pretrained: Optional[str] = None,
                 model_config_file: Optional[str] = None,
                 cache_dir: Optional[str] = None,
                 batch_size: int = 500,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        clip = create_open_clip_model(model_name, pretrained,
                                      model_config_file, cache_dir)
        del clip.visual
        self.clip = clip.requires_grad_(False).eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.batch_size = int(batch_size)

    @property
    def logit_scale(self) -> float:
        """The model's learned scale, ``logit_scale.exp()``."""
        return float(self.clip.logit_scale.exp())

    @torch.no_grad()
    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Raw (unnormalised) text features ``(T, C)`` of ``T`` prompts."""
        device = self.clip.logit_scale.device
        feats: List[torch.Tensor] = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[start:start +
                                               self.batch_size]))
            feats.append(self.clip.encode_text(tokens.to(device)).float())
        return torch.cat(feats)
