from .checkpoint import allow_mmengine_checkpoint_globals
from .dist import setup_distributed
from .rng import derive_seed, seeded_rng

__all__ = [
    'allow_mmengine_checkpoint_globals', 'setup_distributed', 'derive_seed',
    'seeded_rng'
]
