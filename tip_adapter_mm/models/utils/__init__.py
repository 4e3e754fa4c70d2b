from .open_clip_loader import create_open_clip_model
from .zero_shot import build_zero_shot_weights

__all__ = ['create_open_clip_model', 'build_zero_shot_weights']
