"""Checks shared by the tests of the heads trained with a Dassl recipe
(CLIP-Adapter, TaskRes, CLAP): the learning rate per epoch of their
schedules, the train-then-test round trip through the tools, and random
inputs."""
import math
import re
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from conftest import CONFIGS, python_tool, run_tool, tiny_config
from mmengine.config import Config
from mmengine.optim import OptimWrapper

from mmpretrain.registry import OPTIMIZERS, PARAM_SCHEDULERS
from mmpretrain.structures import DataSample

#: The eleven dataset bases every method has a 16-shot config for.
DATASETS = ('caltech101', 'dtd', 'eurosat', 'fgvc_aircraft', 'flowers102',
            'food101', 'imagenet', 'oxford_pets', 'stanford_cars', 'sun397',
            'ucf101')
#: Dassl's constant warm-up: one epoch at this learning rate.
WARMUP_LR = 1e-5


def dassl_lrs(lr: float, epochs: int) -> List[float]:
    """The learning rate of each epoch under Dassl's ``cosine`` scheduler
    with one constant warm-up epoch (``ConstantWarmupScheduler`` around
    ``CosineAnnealingLR(T_max=epochs)``, stepped after every epoch): the
    warm-up value, then the cosine from its start."""
    return [WARMUP_LR] + [
        lr * (1 + math.cos(math.pi * (e - 1) / epochs)) / 2
        for e in range(1, epochs)
    ]


def config_lrs(cfg: Config) -> List[float]:
    """The learning rate of each epoch that ``cfg``'s optimizer and
    ``param_scheduler`` give, with ``end`` filled in from
    ``train_cfg.max_epochs`` as MMEngine's runner does."""
    epochs = cfg.train_cfg.max_epochs
    optimizer = OPTIMIZERS.build(
        dict(cfg.optim_wrapper.optimizer,
             params=[torch.nn.Parameter(torch.zeros(1))]))
    wrapper = OptimWrapper(optimizer)
    schedulers = []
    for scheduler in cfg.param_scheduler:
        scheduler = dict(scheduler)
        scheduler.setdefault('end', epochs)
        schedulers.append(
            PARAM_SCHEDULERS.build(dict(scheduler, optimizer=wrapper)))
    lrs = []
    for _ in range(epochs):
        lrs.append(wrapper.param_groups[0]['lr'])
        wrapper.optimizer.step()
        for scheduler in schedulers:
            scheduler.step()
    return lrs


def check_dassl_schedule(cfg: Config, lr: float, epochs: int) -> None:
    """``cfg`` follows Dassl's warm-up and cosine for ``(lr, epochs)``:
    exactly for the warm-up and the first cosine epoch; the cosine here has
    ``T_max = epochs - 1`` (it follows ``train_cfg.max_epochs``) where
    Dassl's has ``T_max = epochs``, so it decays a little faster: later
    epochs agree within 2% of ``lr`` (0.5% for 200 epochs)."""
    assert cfg.train_cfg.max_epochs == epochs
    assert [s.type for s in cfg.param_scheduler] == ['ConstantLR',
                                                     'CosineAnnealingLR']
    for scheduler in cfg.param_scheduler:
        assert scheduler.by_epoch and not scheduler.get(
            'convert_to_iter_based', False)
        assert 'T_max' not in scheduler
    assert 'end' not in cfg.param_scheduler[1]
    ours, dassl = config_lrs(cfg), dassl_lrs(lr, epochs)
    assert len(ours) == epochs
    np.testing.assert_allclose(ours[:2], dassl[:2], rtol=1e-9)
    np.testing.assert_allclose(ours, dassl, rtol=0,
                               atol=(0.02 if epochs < 200 else 0.005) * lr)
    assert 0 < ours[-1] < dassl[-1] < 0.01 * lr


def read_schedule(name: str) -> Config:
    return Config.fromfile(str(CONFIGS / '_base_/schedules' / f'{name}.py'))


def random_inputs(seed: int, batch: int, channels: int, classes: int
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised features ``(B, C)``, labels ``(B, )`` and a normalised
    text classifier ``(C, N)``."""
    g = torch.Generator().manual_seed(seed)
    feats = F.normalize(torch.randn(batch, channels, generator=g), dim=-1)
    labels = torch.randint(0, classes, (batch, ), generator=g)
    text = F.normalize(torch.randn(channels, classes, generator=g), dim=0)
    return feats, labels, text


def samples(labels: torch.Tensor) -> List[DataSample]:
    return [DataSample().set_gt_label(int(y)) for y in labels]


def numpy_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def top1(output: str) -> float:
    return float(
        re.findall(r'Epoch\(test\).*accuracy/top1: ([0-9.]+)', output)[-1])


def train_then_test(tiny_clip: Dict[str, str], image_folders: Path,
                    tmp_path: Path, schedule: str, head: str,
                    epochs: int = 2) -> Dict[str, object]:
    """Train ``head`` with ``schedule`` through tools/train.py on the tiny
    model (few epochs, batch 4), then test its last checkpoint through
    tools/test.py. Returns both outputs and the checkpoints' state dicts."""
    config = tiny_config(
        tmp_path / f'{schedule}.py', tiny_clip, image_folders,
        schedule=schedule,
        extra=(f"model['head'] = {head}\n"
               f'train_cfg = dict(max_epochs={epochs}, '
               'global_batch_size=4)\n'))
    work_dir = tmp_path / 'work'
    trained = run_tool(
        python_tool('train.py', str(config), '--work-dir', str(work_dir)))
    last = work_dir / f'epoch_{epochs}.pth'
    tested = run_tool(
        python_tool('test.py', str(config), str(last), '--work-dir',
                    str(tmp_path / 'test')))
    states = {
        e: torch.load(work_dir / f'epoch_{e}.pth',
                      weights_only=False)['state_dict']
        for e in range(max(1, epochs - 1), epochs + 1)
    }
    return dict(config=config, trained=trained, tested=tested,
                states=states)
