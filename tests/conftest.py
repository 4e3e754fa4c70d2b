"""Shared fixtures: a tiny open_clip model saved to disk, generated images."""
import json
import os
import os.path as osp
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / 'configs'

TINY_VIT = {
    'embed_dim': 32,
    'vision_cfg': {'image_size': 224, 'layers': 1, 'width': 32,
                   'head_width': 16, 'patch_size': 32},
    'text_cfg': {'context_length': 77, 'vocab_size': 49408, 'width': 32,
                 'heads': 2, 'layers': 1},
}

#: Class folder -> mean colour of its images.
COLOURS = {
    'red_apple': (200, 40, 40),
    'green_leaf': (40, 200, 40),
    'blue_sky': (40, 40, 200),
}


@pytest.fixture(scope='session')
def tiny_clip(tmp_path_factory) -> Dict[str, str]:
    """A tiny open_clip architecture with random weights, saved as a JSON
    config and a state-dict checkpoint (the real ``pretrained=<path>``
    route loads it back)."""
    root = tmp_path_factory.mktemp('tiny_clip')
    config = root / 'TinyCLIP-ViT-test.json'
    config.write_text(json.dumps(TINY_VIT))
    open_clip.add_model_config(str(config))
    torch.manual_seed(0)
    model = open_clip.create_model('TinyCLIP-ViT-test')
    checkpoint = root / 'tiny_clip.pt'
    torch.save(model.state_dict(), checkpoint)
    return dict(model_name='TinyCLIP-ViT-test', pretrained=str(checkpoint),
                model_config_file=str(config))


def write_images(root: Path, per_class: int, seed: int,
                 size=(48, 64)) -> List[Path]:
    """``per_class`` noisy JPEGs of each colour class under ``root/<cls>``."""
    rng = np.random.default_rng(seed)
    paths = []
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.normal(0, 40, (*size, 3))
            img = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
            path = root / name / f'{i:03d}.jpg'
            Image.fromarray(img).save(path)
            paths.append(path)
    return paths


@pytest.fixture(scope='session')
def image_folders(tmp_path_factory) -> Path:
    """``train/`` (12 per class), ``val/`` (4) and ``test/`` (5) folders of
    class folders."""
    root = tmp_path_factory.mktemp('images')
    for seed, (split, per_class) in enumerate(
            [('train', 12), ('val', 4), ('test', 5)]):
        write_images(root / split, per_class, seed)
    return root


def tiny_config(path: Path, tiny_clip: Dict[str, str], data_root: Path,
                num_shots: int = 4, augment_epoch: int = 3,
                schedule: str = 'tip_adapter', extra: str = '') -> Path:
    """A test config inheriting the real ``_base_`` files, with the tiny
    model and the generated folders swapped in. ``schedule='tip_adapter_f'``
    gives Tip-Adapter-F with learnable keys."""
    path.write_text(f"""
_base_ = [
    {str(CONFIGS / '_base_/models/tip_adapter_rn50.py')!r},
    {str(CONFIGS / '_base_/datasets/folder_fewshot.py')!r},
    {str(CONFIGS / f'_base_/schedules/{schedule}.py')!r},
    {str(CONFIGS / '_base_/default_runtime.py')!r},
]
clip = dict(model_name={tiny_clip['model_name']!r},
            pretrained={tiny_clip['pretrained']!r},
            model_config_file={tiny_clip['model_config_file']!r})
model = dict(backbone=clip, text_encoder=clip,
             head=dict(num_classes=3, search_step=(20, 10), topk=(1, ),
                       train_cache_keys={schedule == 'tip_adapter_f'}))
data_root = {str(data_root)!r}
loader = dict(batch_size=8, num_workers=0, persistent_workers=False)
fewshot_dataloader = dict(
    **loader,
    dataset=dict(num_shots={num_shots}, dataset=dict(data_root=data_root)))
val_dataloader = dict(**loader, dataset=dict(data_root=data_root))
test_dataloader = dict(**loader, dataset=dict(data_root=data_root))
few_shot_cfg = dict(augment_epoch={augment_epoch})
{extra}
""")
    return path


def run_tool(args: List[str], timeout: int = 300, python_path: str = '',
             expect_rc: int = 0) -> str:
    """Run a command from the repository root; return stdout+stderr, fail
    the test with the output if it does not exit with ``expect_rc``."""
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), python_path)
                                          if p),
               OMP_NUM_THREADS='1',
               PATH=osp.dirname(sys.executable) + os.pathsep +
               os.environ.get('PATH', ''))
    proc = subprocess.run(
        args, cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=timeout)
    assert proc.returncode == expect_rc, proc.stdout[-6000:]
    return proc.stdout


def python_tool(script: str, *args: str) -> List[str]:
    return [sys.executable, osp.join('tools', script), *args]


def free_port() -> str:
    """A free TCP port on localhost, for torchrun's rendezvous."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return str(s.getsockname()[1])
