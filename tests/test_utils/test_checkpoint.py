"""MMEngine checkpoints load under torch>=2.6 without unrestricted pickle;
a saved adapted model reproduces the test metric through tools/test.py."""
import pickle

import numpy as np
import pytest
import torch
from conftest import python_tool, run_tool, tiny_config
from mmengine.config import Config
from mmengine.logging import HistoryBuffer
from mmengine.runner import load_checkpoint
from mmengine.runner.checkpoint import _load_checkpoint
from mmpretrain.registry import RUNNERS

import tip_adapter_mm  # noqa: F401  (registers the weights_only loader)


class Payload:
    """An arbitrary object a malicious or foreign checkpoint could hold."""


def test_mmengine_checkpoint_contents_load(tmp_path):
    buffer = HistoryBuffer()
    buffer.update(np.float64(0.5))
    checkpoint = dict(
        meta=dict(epoch=3, seed=1, acc=np.float64(61.2),
                  hist=np.arange(3)),
        state_dict=dict(w=torch.ones(2)),
        message_hub=dict(log_scalars={'train/loss': buffer}))
    path = tmp_path / 'epoch_3.pth'
    torch.save(checkpoint, path)
    loaded = _load_checkpoint(str(path), map_location='cpu')
    assert loaded['meta']['acc'] == 61.2
    assert loaded['message_hub']['log_scalars']['train/loss'].mean() == 0.5
    assert torch.equal(loaded['state_dict']['w'], torch.ones(2))


def test_foreign_objects_are_still_refused(tmp_path):
    path = tmp_path / 'foreign.pth'
    torch.save(dict(state_dict={}, extra=Payload()), path)
    with pytest.raises(pickle.UnpicklingError, match='Payload'):
        _load_checkpoint(str(path), map_location='cpu')


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'nothing\.pth.*does not '
                       'exist'):
        _load_checkpoint(str(tmp_path / 'nothing.pth'))


def test_saved_adapted_model_reproduces_test_metric(tiny_clip, image_folders,
                                                    tmp_path):
    config = tiny_config(tmp_path / 'tiny.py', tiny_clip, image_folders)
    cfg = Config.fromfile(str(config))
    cfg.work_dir = str(tmp_path / 'work')
    assert cfg.runner_type == 'FewShotRunner'
    runner = RUNNERS.build(cfg)
    metrics = runner.test()
    head = runner.model.head
    path = tmp_path / 'tip_adapter.pth'
    torch.save(
        dict(meta=dict(dataset_meta=runner.test_dataloader.dataset.metainfo),
             state_dict=runner.model.state_dict(),
             message_hub=runner.message_hub.state_dict()), path)

    output = run_tool(python_tool('test.py', str(config), str(path),
                                  '--work-dir', str(tmp_path / 'reload')))
    assert 'Building zero-shot weights' not in output
    # Neither cache nor search rebuilt: the fresh work dir's feature store
    # is empty, so a rebuild would encode the few-shot views or the val
    # split; only the test split is encoded (the test loop runs on stored
    # features of it).
    encoded = [line for line in output.splitlines() if 'Encoding' in line]
    assert len(encoded) == 1 and 'Encoding 15 test images' in encoded[0], \
        encoded
    assert 'augmented views' not in output and 'val images' not in output
    found = float(output.rsplit('accuracy/top1: ', 1)[1].split()[0])
    assert found == pytest.approx(metrics['accuracy/top1'], abs=1e-4)

    fresh = RUNNERS.build(cfg).model
    load_checkpoint(fresh, str(path), map_location='cpu')
    assert fresh.head.hyperparameters == head.hyperparameters
    assert fresh.head.is_fitted and fresh.head.searched
    assert torch.equal(fresh.head.cache.keys, head.cache.keys)
    assert torch.equal(fresh.head.cache.values, head.cache.values)
    assert torch.equal(fresh.head.cache.beta, head.cache.beta)
    assert torch.equal(fresh.head.zero_shot_weights, head.zero_shot_weights)
