from .checkpoint import allow_mmengine_checkpoint_globals
from .cli import (build_runner, check_cfg_options, load_config,
                  save_adapted_model)
from .dist import setup_distributed, teardown_distributed
from .rng import derive_seed, seeded_rng

__all__ = [
    'allow_mmengine_checkpoint_globals', 'build_runner', 'check_cfg_options',
    'load_config', 'save_adapted_model', 'setup_distributed',
    'teardown_distributed', 'derive_seed', 'seeded_rng'
]
