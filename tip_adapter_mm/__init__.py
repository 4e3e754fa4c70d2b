"""Few-shot adaptation of CLIP as an MMPretrain plugin.

Importing the package (``custom_imports = dict(imports=['tip_adapter_mm'])``)
registers its datasets, models, metrics, loops, runner and hooks in
MMPretrain's registries.
"""
from .registry import register_config_scope
from .quiet import library_noise_filtered
from .utils.checkpoint import allow_mmengine_checkpoint_globals
from .version import __version__

allow_mmengine_checkpoint_globals()
register_config_scope()  # `tip_adapter_mm::_base_/...` in configs

# (MMCV warns about its missing compiled ops while MMPretrain imports it.)
with library_noise_filtered():
    from . import datasets, engine, evaluation, models  # noqa: E402,F401

__all__ = ['__version__']
