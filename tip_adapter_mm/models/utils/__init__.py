from .open_clip_loader import create_open_clip_model
from .pretrained_check import check_pretrained
from .prompts import PROMPT_TEMPLATES, get_templates
from .zero_shot import build_zero_shot_weights

__all__ = [
    'create_open_clip_model', 'build_zero_shot_weights', 'check_pretrained',
    'PROMPT_TEMPLATES', 'get_templates'
]
