from .checkpoint import allow_mmengine_checkpoint_globals
from .cli import build_runner, check_cfg_options, load_config
from .dist import setup_distributed
from .rng import derive_seed, seeded_rng

__all__ = [
    'allow_mmengine_checkpoint_globals', 'build_runner', 'check_cfg_options',
    'load_config', 'setup_distributed', 'derive_seed',
    'seeded_rng'
]
