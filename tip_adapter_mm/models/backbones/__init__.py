from .open_clip_visual import OpenCLIPVisualBackbone

__all__ = ['OpenCLIPVisualBackbone']
