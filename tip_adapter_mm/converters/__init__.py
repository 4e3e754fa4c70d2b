"""Weight converters (the logic behind ``tools/model_converters/``)."""
from .open_clip_to_mmpretrain import (convert_visual_tower,
                                      load_clip_state_dict,
                                      mmpretrain_tower_cfg,
                                      tower_options_from_model_config)

__all__ = [
    'convert_visual_tower', 'load_clip_state_dict', 'mmpretrain_tower_cfg',
    'tower_options_from_model_config'
]
