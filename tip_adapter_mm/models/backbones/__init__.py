from mmpretrain.registry import MODELS
from mmpretrain.utils.dependency import WITH_MULTIMODAL
from .clip_pre_projection import (PRE_PROJECTION_MODULES,
                                  attention_pool_before_projection)
from .mmpretrain_clip import register_missing_clip_towers
from .open_clip_visual import OpenCLIPVisualBackbone

if not WITH_MULTIMODAL:
    # MMPretrain registers ModifiedResNet / CLIPProjection only with its
    # multi-modal dependencies: stand-ins say what to install.
    register_missing_clip_towers(MODELS)
    # ... and so do the pre-projection variants of those modules (ProLIP).
    register_missing_clip_towers(MODELS, PRE_PROJECTION_MODULES)

__all__ = [
    'OpenCLIPVisualBackbone', 'register_missing_clip_towers',
    'attention_pool_before_projection'
]
