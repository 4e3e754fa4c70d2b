"""Every weight-file path names the file and what was expected, whatever
library raised underneath (issue: open_clip's bare ``AssertionError``,
torch's unpickling message with no file named)."""
import copy
import json

import open_clip
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import HistoryBuffer

from conftest import TINY_VIT, tiny_config
from tip_adapter_mm.engine.feature_store import (StoredFeaturesError,
                                                 read_features)
from tip_adapter_mm.models.utils import check_pretrained
from tip_adapter_mm.models.utils.open_clip_loader import \
    create_open_clip_model
from tip_adapter_mm.models.utils.weight_files import CheckpointFileError


class NotAllowed:
    """A class that no safe-load allow-list holds."""


def mmengine_checkpoint(state_dict: dict) -> dict:
    """What MMEngine's Runner writes: a state dict, meta and a message
    hub with its own pickled types."""
    return dict(meta=dict(epoch=1, iter=10), state_dict=state_dict,
                message_hub=dict(log_scalars=dict(
                    loss=HistoryBuffer([1.0, 2.0], [1, 1]))))


@pytest.fixture(scope='module')
def wide_clip(tmp_path_factory):
    """A checkpoint of another architecture (width 48, not 32)."""
    root = tmp_path_factory.mktemp('wide_clip')
    cfg = copy.deepcopy(TINY_VIT)
    cfg['vision_cfg']['width'] = cfg['text_cfg']['width'] = 48
    (root / 'TinyCLIP-ViT-wide.json').write_text(json.dumps(cfg))
    open_clip.add_model_config(str(root / 'TinyCLIP-ViT-wide.json'))
    path = root / 'wide.pt'
    torch.save(open_clip.create_model('TinyCLIP-ViT-wide').state_dict(),
               path)
    return str(path)


def test_pretrained_of_another_architecture(tiny_clip, wide_clip):
    with pytest.raises(CheckpointFileError) as info:
        create_open_clip_model(tiny_clip['model_name'], wide_clip)
    text = str(info.value)
    assert repr(wide_clip) in text
    assert 'TinyCLIP-ViT-test' in text and 'shape mismatches' in text
    # One mismatch, as the module and the file have it.
    assert 'visual.class_embedding: expected [32], found [48]' in text
    assert isinstance(info.value.__cause__, AssertionError)


def test_mmengine_checkpoint_as_pretrained(tiny_clip, tmp_path):
    state = open_clip.create_model(tiny_clip['model_name']).state_dict()
    path = tmp_path / 'epoch_1.pth'
    torch.save(mmengine_checkpoint(
        {f'backbone.{k}': v for k, v in state.items()}), path)
    with pytest.raises(CheckpointFileError) as info:
        create_open_clip_model(tiny_clip['model_name'], str(path))
    text = str(info.value)
    assert repr(str(path)) in text
    assert 'MMEngine checkpoint of a trained model' in text
    assert 'tools/test.py as CHECKPOINT' in text and 'not as pretrained' \
        in text
    assert 'weights_only=False' not in text  # torch's advice is not ours
    assert info.value.__cause__ is not None


def test_init_cfg_pretrained_unreadable_and_refused(tmp_path):
    module = torch.nn.Linear(3, 2)
    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'not a checkpoint at all')
    with pytest.raises(CheckpointFileError) as info:
        check_pretrained(module, dict(type='Pretrained',
                                      checkpoint=str(garbage)), 'model.neck')
    assert repr(str(garbage)) in str(info.value)
    assert 'model.neck' in str(info.value)
    assert 'not a readable checkpoint' in str(info.value)
    assert info.value.__cause__ is not None

    refused = tmp_path / 'refused.pth'
    torch.save(dict(state_dict=module.state_dict(), extra=NotAllowed()),
               refused)
    with pytest.raises(CheckpointFileError) as info:
        check_pretrained(module, dict(type='Pretrained',
                                      checkpoint=str(refused)), 'model.neck')
    assert repr(str(refused)) in str(info.value)
    assert 'NotAllowed' in str(info.value)
    assert 'weights_only=True' in str(info.value)


def test_stored_features_errors_name_the_file(tmp_path):
    damaged = tmp_path / 'test_0123.pth'
    damaged.write_bytes(b'\x00' * 64)
    with pytest.raises(StoredFeaturesError) as info:
        read_features(str(damaged))
    assert repr(str(damaged)) in str(info.value)
    assert info.value.__cause__ is not None


@pytest.fixture(scope='module')
def runner(tiny_clip, image_folders, tmp_path_factory):
    """A real FewShotRunner of the tiny Tip-Adapter config."""
    from tip_adapter_mm.utils import build_runner
    root = tmp_path_factory.mktemp('runner')
    cfg = Config.fromfile(
        str(tiny_config(root / 'cfg.py', tiny_clip, image_folders)))
    cfg.work_dir = str(root / 'work')
    cfg.launcher = 'none'
    return build_runner(cfg)


def test_load_from_errors(runner, tmp_path):
    with pytest.raises(CheckpointFileError) as info:
        runner.load_checkpoint(str(tmp_path / 'missing.pth'))
    assert 'missing.pth' in str(info.value)
    assert 'does not exist' in str(info.value)
    assert isinstance(info.value.__cause__, FileNotFoundError)

    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'PK\x03\x04 truncated')
    with pytest.raises(CheckpointFileError) as info:
        runner.load_checkpoint(str(garbage))
    assert repr(str(garbage)) in str(info.value)
    assert 'not a readable checkpoint' in str(info.value)
    assert info.value.__cause__ is not None

    refused = tmp_path / 'refused.pth'
    torch.save(dict(meta=dict(epoch=1), state_dict={}, x=NotAllowed()),
               refused)
    with pytest.raises(CheckpointFileError) as info:
        runner.load_checkpoint(str(refused))
    assert 'NotAllowed' in str(info.value)
    assert 'weights_only=True' in str(info.value)

    other = tmp_path / 'other_model.pth'
    torch.save(mmengine_checkpoint(
        {'fc.weight': torch.zeros(5, 7), 'fc.bias': torch.zeros(5)}), other)
    with pytest.raises(CheckpointFileError) as info:
        runner.load_checkpoint(str(other))
    text = str(info.value)
    assert repr(str(other)) in text and 'not a checkpoint of this model' \
        in text
    assert 'unexpected keys (2): fc.weight; fc.bias' in text
    assert 'missing keys' in text


def test_resume_from_a_state_dict(runner, tmp_path):
    state = tmp_path / 'state_dict.pth'
    model = runner.model
    torch.save(dict(state_dict=model.state_dict()), state)
    with pytest.raises(CheckpointFileError) as info:
        runner.resume(str(state))
    assert repr(str(state)) in str(info.value)
    assert "no 'meta' entry" in str(info.value)
    assert isinstance(info.value.__cause__, KeyError)
