"""Shared fixtures and problem builders.

* ``tiny_clip``: a tiny open_clip architecture with random weights, saved
  and loaded back through the real ``pretrained=<path>`` route;
* ``image_folders``: generated JPEG folders (train/val/test);
* :func:`tiny_config`: a config inheriting the real ``_base_`` files;
* :func:`random_problem`: clustered random features for head unit tests;
* ``counting_plugin``: a visual backbone that logs every image it encodes,
  for tests of what the feature store saves;
* :func:`run_tool`, :func:`run_distributed`: the tools as subprocesses.
"""
import importlib.util
import inspect
import json
import os
import os.path as osp
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

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


#: Four coloured classes for the base-to-new tests: base = the first two
#: labels, new = the last two.
FOUR_COLOURS = {'a_red': (200, 40, 40), 'b_green': (40, 200, 40),
                'c_blue': (40, 40, 200), 'd_yellow': (200, 200, 40)}


@pytest.fixture(scope='session')
def four_classes(tmp_path_factory) -> Path:
    """``train/`` (4 per class), ``val/`` (2) and ``test/`` (3) folders of
    the :data:`FOUR_COLOURS` classes (32 x 32 JPEGs)."""
    root = tmp_path_factory.mktemp('four')
    rng = np.random.default_rng(0)
    for split, count in (('train', 4), ('val', 2), ('test', 3)):
        for name, colour in FOUR_COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                noise = rng.normal(0, 40, (32, 32, 3))
                img = np.clip(np.array(colour) + noise, 0, 255)
                Image.fromarray(img.astype(np.uint8)).save(
                    root / split / name / f'{i}.jpg')
    return root


def tiny_config(path: Path, tiny_clip: Dict[str, str], data_root: Path,
                num_shots: int = 4, augment_epoch: int = 3,
                schedule: str = 'tip_adapter', extra: str = '',
                model_base: str = 'tip_adapter_rn50',
                head: Optional[str] = None) -> Path:
    """A test config inheriting the real ``_base_`` files, with the tiny
    model and the generated folders swapped in. ``schedule='tip_adapter_f'``
    gives Tip-Adapter-F with learnable keys. ``model_base`` names the model
    base (``configs/_base_/models/<model_base>.py``) and ``head`` the
    ``model.head`` dict's source (default: Tip-Adapter's, 3 classes)."""
    if head is None:
        head = ("dict(num_classes=3, search_step=(20, 10), topk=(1, ), "
                f"train_cache_keys={schedule == 'tip_adapter_f'})")
    path.write_text(f"""
_base_ = [
    {str(CONFIGS / f'_base_/models/{model_base}.py')!r},
    {str(CONFIGS / '_base_/datasets/folder_fewshot.py')!r},
    {str(CONFIGS / f'_base_/schedules/{schedule}.py')!r},
    {str(CONFIGS / '_base_/default_runtime.py')!r},
]
clip = dict(model_name={tiny_clip['model_name']!r},
            pretrained={tiny_clip['pretrained']!r},
            model_config_file={tiny_clip['model_config_file']!r})
model = dict(backbone=clip, text_encoder=clip, head={head})
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


def load_tool(name: str):
    """``tools/<name>.py`` imported as a module (the scripts are not a
    package)."""
    spec = importlib.util.spec_from_file_location(name,
                                                  REPO / f'tools/{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def python_tool(script: str, *args: str) -> List[str]:
    return [sys.executable, osp.join('tools', script), *args]


def free_port() -> str:
    """A free TCP port on localhost, for torchrun's rendezvous."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return str(s.getsockname()[1])


#: Output of a torchrun whose rendezvous port was taken between
#: :func:`free_port` and its bind: the run is retried on another port.
PORT_TAKEN = ('address already in use', 'EADDRINUSE', 'errno: 98',
              'The server socket has failed to listen')


def run_distributed(script: str, config: str, nprocs: int, *args: str,
                    timeout: int = 900, python_path: str = '',
                    attempts: int = 3) -> str:
    """``tools/<script> CONFIG NPROCS ARGS`` (``dist_train.sh`` or
    ``dist_test.sh``), robust to a loaded machine: a generous timeout, and a
    new rendezvous port when the chosen one was taken meanwhile."""
    for attempt in range(attempts):
        env = dict(os.environ,
                   PYTHONPATH=os.pathsep.join(
                       p for p in (str(REPO), python_path) if p),
                   OMP_NUM_THREADS='1',
                   PORT=free_port(),
                   PATH=osp.dirname(sys.executable) + os.pathsep +
                   os.environ.get('PATH', ''))
        proc = subprocess.run(
            ['bash', osp.join('tools', script), config, str(nprocs), *args],
            cwd=REPO, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, timeout=timeout)
        if proc.returncode == 0:
            return proc.stdout
        if attempt + 1 < attempts and any(p in proc.stdout
                                          for p in PORT_TAKEN):
            continue
        break
    raise AssertionError(proc.stdout[-6000:])


def random_problem(seed: int = 0,
                   classes: int = 6,
                   channels: int = 24,
                   shots: int = 4,
                   views: int = 3,
                   num_val: int = 150,
                   num_test: int = 200,
                   noise: float = 0.9) -> Dict[str, torch.Tensor]:
    """Clustered random features: class centres on the sphere, samples
    around them, a zero-shot classifier near the centres.

    Returns raw (unnormalised) features: ``support`` ``(views, classes *
    shots, channels)`` with ``support_labels``; ``val``/``test`` ``(M,
    channels)`` with their labels; ``zero_shot_weights`` ``(channels,
    classes)`` (L2-normalised columns).
    """
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(
        torch.randn(classes, channels, generator=g), dim=-1)

    def around(labels, scale=1.0):
        return scale * (centres[labels] + noise * torch.randn(
            len(labels), channels, generator=g))

    support_labels = torch.arange(classes).repeat_interleave(shots)
    support = torch.stack([
        around(support_labels, 1 + 0.5 * v) for v in range(views)
    ])
    val_labels = torch.randint(0, classes, (num_val, ), generator=g)
    test_labels = torch.randint(0, classes, (num_test, ), generator=g)
    weights = torch.nn.functional.normalize(
        centres.t() + 0.8 * torch.randn(channels, classes, generator=g),
        dim=0)
    return dict(support=support, support_labels=support_labels,
                val=around(val_labels), val_labels=val_labels,
                test=around(test_labels), test_labels=test_labels,
                zero_shot_weights=weights)


def image_fingerprint(image: torch.Tensor) -> str:
    """The line the counting backbone writes for one preprocessed image."""
    image = image.double()
    return f'{float(image.sum()):.3f}:{float((image * image).sum()):.1f}'


#: A visual backbone that appends one line per encoded image to a log
#: (:func:`image_fingerprint` of its preprocessed tensor), and a hook that
#: writes markers, so tests can count which images were encoded when.
COUNTING_PLUGIN = '''
import torch
from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS, MODELS
from tip_adapter_mm.models import OpenCLIPVisualBackbone


{fingerprint}

@MODELS.register_module()
class CountingOpenCLIPVisualBackbone(OpenCLIPVisualBackbone):

    def __init__(self, count_file, **kwargs):
        super().__init__(**kwargs)
        self.count_file = count_file

    def forward(self, x):
        with open(self.count_file, 'a') as f:
            f.writelines(image_fingerprint(img) + '\\n' for img in x)
        return super().forward(x)


@HOOKS.register_module()
class EncoderCountMarkerHook(Hook):
    priority = 'HIGHEST'

    def __init__(self, count_file):
        self.count_file = count_file

    def _mark(self, what):
        with open(self.count_file, 'a') as f:
            f.write(f'mark {what}\\n')

    def before_train(self, runner):
        self._mark('before_train')

    def after_train(self, runner):
        self._mark('after_train')
'''.replace('{fingerprint}', inspect.getsource(image_fingerprint))


@pytest.fixture(scope='session')
def counting_plugin(tmp_path_factory) -> Path:
    """A folder with ``counting_backbone.py`` (:data:`COUNTING_PLUGIN`), to
    put on ``PYTHONPATH`` and in ``custom_imports``."""
    root = tmp_path_factory.mktemp('counting_plugin')
    (root / 'counting_backbone.py').write_text(COUNTING_PLUGIN)
    return root


def split_fingerprints(config: Path, split: str) -> Counter:
    """Fingerprints of the images of ``split`` of a config, computed here
    without the model: the split's test pipeline, then CLIP's normalisation
    as the model's data preprocessor applies it."""
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate
    from mmpretrain.registry import DATASETS, MODELS
    from tip_adapter_mm.models.classifiers.clip_few_shot import (CLIP_MEAN,
                                                                 CLIP_STD)
    cfg = Config.fromfile(str(config), import_custom_modules=False)
    dataset = DATASETS.build(cfg[f'{split}_dataloader'].dataset)
    preprocessor = MODELS.build(
        dict(type='FeatureOrImageDataPreprocessor', mean=CLIP_MEAN,
             std=CLIP_STD, to_rgb=True))
    batch = pseudo_collate([dataset[i] for i in range(len(dataset))])
    images = preprocessor(batch, False)['inputs']
    return Counter(image_fingerprint(image) for image in images)


def read_count_log(path: Path) -> List[str]:
    """The lines of a counting backbone's log (none if it was never
    written)."""
    return path.read_text().splitlines() if path.exists() else []
