"""Tip-Adapter and Tip-Adapter-F as an MMPretrain plugin.

Importing the package (``custom_imports = dict(imports=['tip_adapter_mm'])``)
registers its datasets, models and hooks in MMPretrain's registries.
"""
from .utils.checkpoint import allow_mmengine_checkpoint_globals
from .version import __version__

allow_mmengine_checkpoint_globals()

from . import datasets, engine, models  # noqa: E402,F401

__all__ = ['__version__']
