"""The visual tower of an open_clip model as an MMPretrain backbone."""
from typing import Optional, Tuple

import torch
from mmengine.model import BaseModule
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer

from mmpretrain.registry import MODELS
from ..utils import create_open_clip_model
from .clip_pre_projection import (Projection,
                                  attention_pool_before_projection,
                                  attention_pool_projection)

#: ``output`` values of :class:`OpenCLIPVisualBackbone`.
OUTPUTS = ('projected', 'pre_projection')


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
        output (str): ``'projected'`` (default): CLIP's image embedding.
            ``'pre_projection'``: the features before the tower's last
            projection (ProLIP), which :meth:`visual_projection` returns:
            the attention pool's output projection ``attnpool.c_proj`` of
            the ResNets (``ModifiedResNet``), ``proj`` after ``ln_post`` of
            the ViTs (``VisionTransformer``). Other towers (timm) raise
            ValueError.

    Shapes:
        input ``(B, 3, H, W)`` normalised images; output a 1-tuple with the
        projected, unnormalised image embedding ``(B, C)``, or with the
        pre-projection features ``(B, D_pre)`` (``out_channels``).
    """

    def __init__(self,
                 model_name: str,
                 pretrained: Optional[str] = None,
                 model_config_file: Optional[str] = None,
                 cache_dir: Optional[str] = None,
                 save_weights: bool = False,
                 output: str = 'projected',
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if output not in OUTPUTS:
            raise ValueError(f'OpenCLIPVisualBackbone: output must be one of '
                             f'{OUTPUTS}, got {output!r}.')
        clip = create_open_clip_model(model_name, pretrained,
                                      model_config_file, cache_dir)
        self.visual = clip.visual
        self.output = output
        self.out_channels = (self._split_projection(model_name)
                             if output == 'pre_projection' else int(
                                 self.visual.output_dim))
        self.visual.requires_grad_(False)
        self.visual.eval()
        self.save_weights = save_weights
        self._load_prefix: Optional[str] = None
        self.register_state_dict_post_hook(self._drop_frozen_weights)
        self.register_load_state_dict_post_hook(self._forgive_frozen_weights)

    def _split_projection(self, model_name: str) -> int:
        """Prepare the pre-projection output; return its width ``D_pre``.

        A ViT's ``proj`` moves out of the tower into the buffer
        ``vit_projection`` (open_clip's ViT skips a ``proj`` that is None:
        its forward gives the pooled, ``ln_post``-normalised features); a
        ResNet keeps its modules and :meth:`forward` stops before
        ``attnpool.c_proj``.
        """
        visual = self.visual
        if isinstance(visual, ModifiedResNet):
            return int(visual.attnpool.c_proj.in_features)
        if isinstance(visual, VisionTransformer) and isinstance(
                visual.proj, torch.Tensor):
            proj = visual.proj.detach().clone()
            visual.proj = None
            self.register_buffer('vit_projection', proj)
            return int(proj.shape[0])
        raise ValueError(
            f"OpenCLIPVisualBackbone(output='pre_projection'): the visual "
            f'tower of {model_name!r} is a {type(visual).__name__}, whose '
            'last projection is not known here (known: open_clip\'s '
            "ModifiedResNet's attnpool.c_proj and VisionTransformer's "
            "proj). Use output='projected', or another tower.")

    def visual_projection(self) -> Optional[Projection]:
        """The tower's last projection, which this backbone's output has not
        gone through: ``(weight (D_pre, D), bias (D, ) or None)``; None when
        the output is projected already (``output='projected'``)."""
        if self.output != 'pre_projection':
            return None
        if isinstance(self.visual, ModifiedResNet):
            return attention_pool_projection(self.visual.attnpool)
        return self.vit_projection, None

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
        """``(B, 3, H, W)`` -> ``((B, out_channels), )``."""
        if self.output == 'pre_projection' and isinstance(
                self.visual, ModifiedResNet):
            x = self.visual.stem(x)
            for layer in (self.visual.layer1, self.visual.layer2,
                          self.visual.layer3, self.visual.layer4):
                x = layer(x)
            return (attention_pool_before_projection(self.visual.attnpool,
                                                     x), )
        return (self.visual(x), )
