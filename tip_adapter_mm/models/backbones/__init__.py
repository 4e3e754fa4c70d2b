from mmpretrain.registry import MODELS
from mmpretrain.utils.dependency import WITH_MULTIMODAL
from .mmpretrain_clip import register_missing_clip_towers
from .open_clip_visual import OpenCLIPVisualBackbone

if not WITH_MULTIMODAL:
    # MMPretrain registers ModifiedResNet / CLIPProjection only with its
    # multi-modal dependencies: stand-ins say what to install.
    register_missing_clip_towers(MODELS)

__all__ = ['OpenCLIPVisualBackbone', 'register_missing_clip_towers']
