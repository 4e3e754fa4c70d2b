"""FewShotBuilder (through BuildCacheHook on a FewShotRunner): the stored
support views are the raw features of the augmented passes, and the cache
keys their normalised mean, computed here with a deterministic stand-in
encoder."""
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from mmengine.config import Config
from mmengine.model import BaseModule

from mmpretrain.registry import DATASETS, MODELS, RUNNERS
from tip_adapter_mm.datasets import AugmentedViewsDataset
from tip_adapter_mm.engine import FewShotRunner, read_features
from conftest import CONFIGS

MEAN = np.array([0.48145466, 0.4578275, 0.40821073]) * 255
STD = np.array([0.26862954, 0.26130258, 0.27577711]) * 255


def projection() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(12, 32))


@MODELS.register_module(force=True)
class QuadrantColourBackbone(BaseModule):
    """Stand-in encoder: mean colour of each image quadrant (12 numbers),
    times a fixed matrix, plus 1 so that feature norms vary."""

    def __init__(self):
        super().__init__()
        self.register_buffer('proj', torch.from_numpy(projection()).float())

    def forward(self, x):
        quadrants = F.adaptive_avg_pool2d(x, 2).flatten(1)  # (B, 3 * 2 * 2)
        return (quadrants @ self.proj + 1.0, )


def stand_in_features(packed_inputs: torch.Tensor) -> np.ndarray:
    """The stand-in encoder in NumPy, on one packed BGR uint8 image."""
    img = packed_inputs.numpy().astype(np.float64)[::-1]  # BGR -> RGB
    img = (img - MEAN[:, None, None]) / STD[:, None, None]
    _, h, w = img.shape
    quads = [
        img[:, :h // 2, :w // 2], img[:, :h // 2, w // 2:],
        img[:, h // 2:, :w // 2], img[:, h // 2:, w // 2:]
    ]
    # adaptive_avg_pool2d flattens as (channel, row, col)
    pooled = np.stack([q.mean(axis=(1, 2)) for q in quads], axis=1)
    return pooled.reshape(-1) @ projection() + 1.0


def write_gradient_images(root):
    """Images with strong left/right and top/bottom structure, so that
    crops and flips change the stand-in features and their norms."""
    rng = np.random.default_rng(0)
    for split in ('train', 'test'):
        for c in range(3):
            (root / split / f'class{c}').mkdir(parents=True)
            for i in range(4):
                ramp = np.linspace(0, 1, 64)[None, :, None]**(c + 1)
                img = 255 * ramp * rng.uniform(0.2, 1, (1, 1, 3))
                img = img + np.linspace(0, 80, 48)[:, None, None] * i / 3
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
                    root / split / f'class{c}' / f'{i}.png')


def test_cache_keys_are_normalised_mean_of_raw_view_features(
        tiny_clip, tmp_path):
    cfg = Config.fromfile(str(CONFIGS / '_base_/datasets/folder_fewshot.py'))
    data_root = str(tmp_path / 'data')
    write_gradient_images(tmp_path / 'data')
    loader = dict(batch_size=5, num_workers=0, persistent_workers=False)
    cfg.fewshot_dataloader.update(loader)
    cfg.fewshot_dataloader.dataset.num_shots = 3
    cfg.fewshot_dataloader.dataset.dataset.data_root = data_root
    cfg.test_dataloader.update(loader)
    cfg.test_dataloader.dataset.data_root = data_root
    cfg.merge_from_dict(
        dict(
            model=dict(
                type='CLIPFewShotClassifier',
                backbone=dict(type='QuadrantColourBackbone'),
                text_encoder=dict(type='OpenCLIPTextEncoder', **tiny_clip),
                head=dict(type='TipAdapterHead', num_classes=3, topk=(1, ))),
            work_dir=str(tmp_path / 'work'),
            runner_type='FewShotRunner',
            few_shot_cfg=dict(augment_epoch=4),
            test_cfg=dict(type='StoredFeaturesTestLoop'),
            default_scope='mmpretrain',
            custom_hooks=[dict(type='BuildCacheHook')]))
    for key in ('val_dataloader', 'val_evaluator'):
        cfg.pop(key)
    runner = RUNNERS.build(cfg)
    assert isinstance(runner, FewShotRunner)
    assert runner.few_shot.augment_epoch == 4
    runner.test()
    head = runner.model.head

    fewshot = DATASETS.build(cfg.fewshot_dataloader.dataset)
    views = AugmentedViewsDataset(fewshot, num_views=4, seed=1)
    raw = np.stack([
        stand_in_features(views[j]['inputs']) for j in range(len(views))
    ]).reshape(4, 9, 32)
    # The feature store holds these raw (unnormalised) features, view-major
    # (float32 pooling of ~12k pixels per quadrant: ~1e-5 of the scale).
    stored = read_features(runner.few_shot.support_views_path)
    assert runner.few_shot.support_views_path.startswith(
        str(tmp_path / 'work' / 'feature_cache' / 'support_views_'))
    np.testing.assert_allclose(
        stored.feats[0].numpy(), raw.reshape(36, 32), rtol=1e-4,
        atol=1e-4 * np.abs(raw).max())
    norms = np.linalg.norm(raw, axis=2)
    assert (norms.max(axis=0) / norms.min(axis=0)).min() > 1.05
    expected = raw.mean(axis=0)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(
        head.cache.keys.numpy(), expected, rtol=1e-4, atol=1e-5)
    # Averaging normalised features instead would give other keys.
    normalised_first = (raw / np.linalg.norm(raw, axis=2, keepdims=True)).mean(
        axis=0)
    normalised_first /= np.linalg.norm(normalised_first, axis=1, keepdims=True)
    assert np.abs(normalised_first - expected).max() > 1e-2
    labels = np.array(
        [views[j]['data_samples'].gt_label.item() for j in range(9)])
    np.testing.assert_array_equal(head.cache.values.numpy(),
                                  np.eye(3)[labels])
    np.testing.assert_array_equal(stored.labels.numpy(),
                                  np.tile(labels, 4))
    assert head.has_zero_shot_weights
