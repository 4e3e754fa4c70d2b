"""Using heads and adapted models: fitting on your own features, prediction,
TorchScript export.

Not imported by ``tip_adapter_mm`` itself (``import tip_adapter_mm.apis``).
"""
from .export import AdaptedModelForExport, export_torchscript
from .features import evaluate_head, fit_head, predict_logits, search_head
from .inferencer import TipAdapterInferencer, check_adapted_model

__all__ = [
    'TipAdapterInferencer', 'check_adapted_model', 'AdaptedModelForExport',
    'export_torchscript', 'fit_head', 'search_head', 'predict_logits',
    'evaluate_head'
]
