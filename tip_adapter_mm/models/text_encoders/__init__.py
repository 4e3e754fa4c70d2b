from .open_clip_text import OpenCLIPTextEncoder

__all__ = ['OpenCLIPTextEncoder']
