"""Zero-shot CLIP and nearest class mean through tools/test.py: the reported
top-1 equals a NumPy computation from the stored features and the saved
model, under the protocols that select nothing."""
import re

import numpy as np
import pytest
import torch

from tip_adapter_mm.engine import read_features
from conftest import python_tool, run_tool, tiny_config

TOP1 = re.compile(r'Epoch\(test\).*?accuracy/top1: ([0-9.]+)')


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize('head,protocol', [('ZeroShotHead', 'none'),
                                           ('NCMHead', 'val')])
def test_tool_accuracy_matches_numpy(tmp_path, tiny_clip, image_folders,
                                     head, protocol):
    extra = ("model = dict(backbone=clip, text_encoder=clip, "
             f"head=dict(_delete_=True, type='{head}', "
             'num_classes=3))\n'
             f"few_shot_cfg = dict(augment_epoch=2, protocol='{protocol}')\n")
    config = tiny_config(tmp_path / 'cfg.py', tiny_clip, image_folders,
                         augment_epoch=2, extra=extra)
    work = tmp_path / 'work'
    saved = tmp_path / 'model.pth'
    output = run_tool(
        python_tool('test.py', str(config), '--work-dir', str(work),
                    '--save-model', str(saved)))
    top1 = float(TOP1.findall(output)[-1])
    assert 'Hyperparameter search' not in output  # nothing to search

    store = work / 'feature_cache'
    test = read_features(str(next(store.glob('test_*.pth'))))
    feats = normalise(test.feats[0].double().numpy())
    labels = test.labels.numpy()
    state = torch.load(saved, map_location='cpu',
                       weights_only=False)['state_dict']
    if head == 'ZeroShotHead':
        weights = state['head.zero_shot_weights'].double().numpy()
    else:
        views = read_features(str(next(store.glob('support_views_*.pth'))))
        raw = views.feats[0].double().numpy()
        view_labels = views.labels.numpy()
        means = np.stack([
            normalise(raw[view_labels == c]).mean(axis=0) for c in range(3)
        ])
        weights = normalise(means).T
        assert not any(k.startswith('head.zero_shot') for k in state)
    expected = 100.0 * np.mean((feats @ weights).argmax(axis=1) == labels)
    assert top1 == pytest.approx(expected, abs=1e-3)
