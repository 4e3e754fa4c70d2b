from .open_clip_conversion import (convert_visual_tower, load_clip_state_dict,
                                   mmpretrain_tower_cfg,
                                   tower_options_from_model_config)
from .open_clip_loader import create_open_clip_model
from .pretrained_check import check_pretrained
from .zero_shot import build_zero_shot_weights

__all__ = ['create_open_clip_model', 'build_zero_shot_weights']
__all__ += [
    'convert_visual_tower', 'load_clip_state_dict', 'mmpretrain_tower_cfg',
    'tower_options_from_model_config', 'check_pretrained'
]
