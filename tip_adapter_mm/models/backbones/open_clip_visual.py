"""The visual tower of an open_clip model as an MMPretrain backbone."""
from typing import Optional, Tuple

import torch
from mmengine.model import BaseModule

from mmpretrain.registry import MODELS
from ..utils import create_open_clip_model


@MODELS.register_module()
class OpenCLIPVisualBackbone(BaseModule):
    """Frozen visual tower of any open_clip model.

    Weights come from open_clip (a pretrained tag or a local checkpoint
    file); the text tower is dropped. The tower is frozen: no parameter
    requires a gradient and it stays in eval mode whatever ``train()`` asks.

    Args:
        model_name (str): open_clip architecture, e.g. 'RN50', 'ViT-B-16'.
        pretrained (str, optional): open_clip tag ('openai', ...) or the path
            of a local checkpoint. ``None`` keeps random weights.
        model_config_file (str, optional): JSON architecture file for models
            open_clip doesn't ship (see :func:`create_open_clip_model`).
        cache_dir (str, optional): open_clip's download directory.

    Shapes:
        input ``(B, 3, H, W)`` normalised images; output a 1-tuple with the
        projected, unnormalised image embedding ``(B, C)``.
    """

    def __init__(self,
                 model_name: str,
                 pretrained: Optional[str] = None,
                 model_config_file: Optional[str] = None,
                 cache_dir: Optional[str] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        clip = create_open_clip_model(model_name, pretrained,
                                      model_config_file, cache_dir)
        self.visual = clip.visual
        self.out_channels = int(self.visual.output_dim)
        self.visual.requires_grad_(False)
        self.visual.eval()

    def train(self, mode: bool = True) -> 'OpenCLIPVisualBackbone':
        """Keep the tower in eval mode (frozen BatchNorm, no dropout)."""
        super().train(False)
        return self

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor]:
        return (self.visual(x), )
