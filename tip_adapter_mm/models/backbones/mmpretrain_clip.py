"""MMPretrain's CLIP towers, named even without their dependencies.

MMPretrain registers ``ModifiedResNet`` and ``CLIPProjection`` only when
its multi-modal dependencies are installed. Without them, a config that
names one would fail with a bare "not in the registry" error; this module
registers stand-ins that say what to install instead.
"""
from typing import Sequence

from mmengine.registry import Registry

#: The MMPretrain modules that hold converted CLIP visual weights
#: (``tools/model_converters/open_clip_to_mmpretrain.py``) and need
#: MMPretrain's multi-modal dependencies.
CLIP_TOWER_MODULES = ('ModifiedResNet', 'CLIPProjection')

INSTALL_HINT = ('pip install -e ".[multimodal]" in tip-adapter-mm (it pins '
                'transformers 4.46.3 with huggingface_hub < 1.0)')


def register_missing_clip_towers(
        registry: Registry,
        names: Sequence[str] = CLIP_TOWER_MODULES) -> None:
    """Register a stand-in for each of ``names`` the registry lacks; building
    it raises ImportError naming the module and what to install. Called
    only when MMPretrain itself will not register them."""
    for name in names:
        if name in registry.module_dict:
            continue

        def missing(*args, _name=name, **kwargs):
            raise ImportError(
                f'{_name} is registered by MMPretrain only with its '
                f'multi-modal dependencies (transformers, pycocotools): '
                f'{INSTALL_HINT}.')

        registry.register_module(name=name, module=missing)
