"""CLIP visual towers that stop before their last projection (ProLIP).

CLIP's image embedding is the output of the visual tower's last linear
projection: the attention pool's output projection ``attnpool.c_proj`` of
the ResNets (``ModifiedResNet``), the matrix ``proj`` after ``ln_post`` of
the ViTs. ProLIP fine-tunes that projection alone on the tower's features
*before* it, so the towers here output those pre-projection features ``h``
``(B, D_pre)`` and expose the projection they skipped with
``visual_projection()`` -> ``(weight (D_pre, D), bias (D, ) or None)``; the
tower's usual output is ``h @ weight + bias``.

* :func:`attention_pool_before_projection`: the attention pool of a CLIP
  ResNet (open_clip's or MMPretrain's ``AttentionPool2d``), up to and not
  including ``c_proj``;
* ``PreProjectionModifiedResNet``: MMPretrain's ``ModifiedResNet`` (CLIP
  RN weights converted by ``tools/model_converters``) with that output;
* ``CLIPPreProjection``: a neck holding MMPretrain's ``CLIPProjection``
  weights that passes the ViT's class token through unprojected.

:class:`OpenCLIPVisualBackbone` has the same switch for open_clip towers
(``output='pre_projection'``). The two MMPretrain modules need MMPretrain's
multi-modal dependencies, like the modules they extend.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmpretrain.registry import MODELS
from mmpretrain.utils.dependency import WITH_MULTIMODAL

#: What a pre-projection tower returns from ``visual_projection()``.
Projection = Tuple[torch.Tensor, Optional[torch.Tensor]]

#: Names of the MMPretrain-based pre-projection modules of this file.
PRE_PROJECTION_MODULES = ('PreProjectionModifiedResNet', 'CLIPPreProjection')


def attention_pool_before_projection(pool: nn.Module,
                                     x: torch.Tensor) -> torch.Tensor:
    """CLIP's attention pooling of a ResNet feature map without its output
    projection ``pool.c_proj``.

    The query is the mean of the ``H * W`` positions, keys and values are
    the mean and the positions (positional embedding added, per-head
    scaled dot-product attention): the pooled vector that ``c_proj`` maps
    to the image embedding. Works with open_clip's and MMPretrain's
    ``AttentionPool2d`` (``positional_embedding``, ``q_proj``, ``k_proj``,
    ``v_proj``, ``num_heads``).

    Args:
        pool: The attention pool.
        x: Feature map ``(B, C, H, W)``.

    Returns:
        ``(B, C)``; ``pool(x) == out @ pool.c_proj.weight.T +
        pool.c_proj.bias``.
    """
    b, c = x.shape[:2]
    tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
    tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
    tokens = tokens + pool.positional_embedding.to(tokens.dtype)
    heads = int(pool.num_heads)

    def per_head(t: torch.Tensor) -> torch.Tensor:  # (B, L, C) -> (B, h, L, d)
        return t.reshape(b, t.shape[1], heads, c // heads).transpose(1, 2)

    query = per_head(pool.q_proj(tokens[:, :1]))
    key = per_head(pool.k_proj(tokens))
    value = per_head(pool.v_proj(tokens))
    pooled = F.scaled_dot_product_attention(query, key, value)
    return pooled.transpose(1, 2).reshape(b, c)


def attention_pool_projection(pool: nn.Module) -> Projection:
    """``pool.c_proj`` as ``(weight (D_pre, D), bias (D, ))``."""
    return pool.c_proj.weight.detach().t(), pool.c_proj.bias.detach()


if WITH_MULTIMODAL:
    from mmpretrain.models.multimodal.chinese_clip.chinese_clip import \
        ModifiedResNet
    from mmpretrain.models.multimodal.clip.clip_transformer import \
        CLIPProjection

    @MODELS.register_module()
    class PreProjectionModifiedResNet(ModifiedResNet):
        """MMPretrain's ``ModifiedResNet`` (CLIP's ResNets) whose output is
        the attention pool's before its output projection ``c_proj``.

        Arguments, weights (``init_cfg``, e.g. a converted CLIP checkpoint
        with prefix ``'backbone.'``) and state-dict keys are
        ``ModifiedResNet``'s; only the output differs.

        Shapes:
            input ``(B, 3, H, W)``; output a 1-tuple ``((B, 32 *
            base_channels), )``: 2048 for RN50 and RN101.
        """

        def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor]:
            x = x.type(self.conv1.weight.dtype)
            for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2),
                             (self.conv3, self.bn3)):
                x = self.relu(bn(conv(x)))
            x = self.avgpool(x)
            for layer in (self.layer1, self.layer2, self.layer3,
                          self.layer4):
                x = layer(x)
            return (attention_pool_before_projection(self.attnpool, x), )

        def visual_projection(self) -> Projection:
            """``attnpool.c_proj``: weight ``(D_pre, D)``, bias ``(D, )``."""
            return attention_pool_projection(self.attnpool)

    @MODELS.register_module()
    class CLIPPreProjection(CLIPProjection):
        """MMPretrain's ``CLIPProjection`` neck, holding the ViT's projection
        ``proj`` ``(in_channels, out_channels)`` but passing the last
        backbone output through unprojected.

        Arguments, weights (``init_cfg`` with prefix ``'neck.'``) and
        state-dict keys are ``CLIPProjection``'s, so the converted
        checkpoint of a ``VisionTransformer`` + ``CLIPProjection`` config
        loads as it is.

        Shapes:
            input the backbone's outputs, last ``(B, in_channels)``; output
            ``((B, in_channels), )``.
        """

        def forward(self, inputs) -> Tuple[torch.Tensor]:
            if isinstance(inputs, (tuple, list)):
                inputs = inputs[-1]
            if not isinstance(inputs, torch.Tensor):
                raise TypeError('CLIPPreProjection takes a tensor or a '
                                f'tuple of them, got {type(inputs)}.')
            return (inputs, )

        def visual_projection(self) -> Projection:
            """``proj``: weight ``(in_channels, out_channels)``, no bias."""
            return self.proj.detach(), None
