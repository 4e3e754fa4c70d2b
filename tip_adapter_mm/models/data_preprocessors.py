"""A data preprocessor for batches of images or of encoded features."""
import torch

from mmpretrain.models.utils import ClsDataPreprocessor
from mmpretrain.registry import MODELS


@MODELS.register_module()
class FeatureOrImageDataPreprocessor(ClsDataPreprocessor):
    """:class:`ClsDataPreprocessor` for images; features pass through.

    A batch with ``inputs`` (images) gets MMPretrain's usual treatment (BGR
    to RGB, mean/std) and leaves as ``dict(inputs=..., data_samples=...)``.
    A batch with ``feats`` (from :class:`StoredFeaturesDataset` or
    :class:`CachedViewsDataset`: per sample, one ``(C_e, )`` feature per
    visual encoder) leaves as ``dict(feats=((B, C_1), ..., (B, C_E)),
    data_samples=...)``, stacked, float32, on the model's device and not
    normalised; the classifier's ``forward(feats=...)`` takes it.
    """

    def forward(self, data: dict, training: bool = False) -> dict:
        if 'feats' not in data:
            return super().forward(data, training)
        # pseudo_collate gives a list of samples per encoder, default_collate
        # a stacked batch per encoder.
        feats = tuple(
            (f if isinstance(f, torch.Tensor) else torch.stack(list(f)))
            .float() for f in data['feats'])
        data = self.cast_data(
            dict(feats=feats, data_samples=data.get('data_samples')))
        return dict(feats=data['feats'], data_samples=data['data_samples'])
