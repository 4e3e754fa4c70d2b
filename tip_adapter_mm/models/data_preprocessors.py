"""A data preprocessor that passes pre-computed features through."""
import torch

from mmpretrain.models.utils import ClsDataPreprocessor
from mmpretrain.registry import MODELS


@MODELS.register_module()
class FeatureOrImageDataPreprocessor(ClsDataPreprocessor):
    """:class:`ClsDataPreprocessor` for images; features pass through.

    A batch whose inputs are features (from :class:`CachedViewsDataset`)
    is stacked and left unnormalised: ``(C,)`` per sample gives ``(B, C)``;
    a tuple ``((C,), (C2,))`` per sample (two visual encoders) gives the
    tuple ``((B, C), (B, C2))``. Image batches get MMPretrain's usual
    treatment (BGR to RGB, mean/std).
    """

    def forward(self, data: dict, training: bool = False) -> dict:
        inputs = data['inputs']
        if isinstance(inputs, (list, tuple)) and (isinstance(
                inputs[0], (list, tuple)) or inputs[0].dim() == 2):
            # Per-sample tuples, one item per encoder: pseudo_collate gives
            # a list of samples per encoder, default_collate a stacked batch.
            inputs = tuple(
                (f if isinstance(f, torch.Tensor) else torch.stack(list(f)))
                .float() for f in inputs)
        else:
            first = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
            is_features = (first.dim() == 1 if isinstance(
                inputs, (list, tuple)) else inputs.dim() == 2)
            if not is_features:
                return super().forward(data, training)
            if isinstance(inputs, (list, tuple)):
                inputs = torch.stack(list(inputs))
            inputs = inputs.float()
        data = self.cast_data(dict(data, inputs=inputs))
        return dict(inputs=data['inputs'],
                    data_samples=data.get('data_samples'))
