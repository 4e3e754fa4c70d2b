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
        save_weights (bool): Whether checkpoints hold the tower's weights.
            Default False: they are frozen and come from ``pretrained``, so
            a checkpoint keeps only what the adaptation learned or built;
            loading such a checkpoint leaves the tower as built.

    Shapes:
        input ``(B, 3, H, W)`` normalised images; output a 1-tuple with the
        projected, unnormalised image embedding ``(B, C)``.
    """

    def __init__(self,
                 model_name: str,
                 pretrained: Optional[str] = None,
                 model_config_file: Optional[str] = None,
                 cache_dir: Optional[str] = None,
                 save_weights: bool = False,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        clip = create_open_clip_model(model_name, pretrained,
                                      model_config_file, cache_dir)
        self.visual = clip.visual
        self.out_channels = int(self.visual.output_dim)
        self.visual.requires_grad_(False)
        self.visual.eval()
        self.save_weights = save_weights
        self._load_prefix: Optional[str] = None
        self.register_state_dict_post_hook(self._drop_frozen_weights)
        self.register_load_state_dict_post_hook(self._forgive_frozen_weights)

    @staticmethod
    def _drop_frozen_weights(module, state_dict, prefix, local_metadata):
        if not module.save_weights:
            for key in [k for k in state_dict if k.startswith(prefix)]:
                del state_dict[key]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint without the frozen weights: keep the built ones.
        has_weights = any(k.startswith(prefix) for k in state_dict)
        self._load_prefix = None if has_weights else prefix
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @staticmethod
    def _forgive_frozen_weights(module, incompatible_keys):
        if module._load_prefix is not None:
            missing = incompatible_keys.missing_keys
            missing[:] = [
                k for k in missing if not k.startswith(module._load_prefix)
            ]

    def train(self, mode: bool = True) -> 'OpenCLIPVisualBackbone':
        """Keep the tower in eval mode (frozen BatchNorm, no dropout)."""
        super().train(False)
        return self

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor]:
        return (self.visual(x), )
