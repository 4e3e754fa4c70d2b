"""A data preprocessor that passes pre-computed features through."""
import torch

from mmpretrain.models.utils import ClsDataPreprocessor
from mmpretrain.registry import MODELS


@MODELS.register_module()
class FeatureOrImageDataPreprocessor(ClsDataPreprocessor):
    """:class:`ClsDataPreprocessor` for images; features pass through.

    A batch whose inputs are 1-D per sample (features ``(C,)`` from
    :class:`CachedViewsDataset`) is stacked to ``(B, C)`` float and left
    unnormalised; image batches get MMPretrain's usual treatment (BGR to
    RGB, CLIP mean/std).
    """

    def forward(self, data: dict, training: bool = False) -> dict:
        inputs = data['inputs']
        first = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
        is_features = (first.dim() == 1 if isinstance(inputs, (list, tuple))
                       else inputs.dim() == 2)
        if not is_features:
            return super().forward(data, training)
        if isinstance(inputs, (list, tuple)):
            inputs = torch.stack(list(inputs))
        data = self.cast_data(dict(data, inputs=inputs.float()))
        return dict(inputs=data['inputs'],
                    data_samples=data.get('data_samples'))
