"""Using an adapted model: prediction and TorchScript export.

Not imported by ``tip_adapter_mm`` itself (``import tip_adapter_mm.apis``).
"""
from .export import AdaptedModelForExport, export_torchscript
from .inferencer import TipAdapterInferencer, check_adapted_model

__all__ = [
    'TipAdapterInferencer', 'check_adapted_model', 'AdaptedModelForExport',
    'export_torchscript'
]
