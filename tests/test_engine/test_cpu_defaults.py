"""Loader workers and torch threads chosen from the machine (issue 14,
item 7): the rule against an independent computation, ``'auto'`` resolved
in the loaders the runner builds, explicit numbers kept."""
import pytest
import torch
from mmengine.config import Config
from torch.utils.data import Dataset

from tip_adapter_mm.engine.few_shot_builder import encoding_loader_cfg
from tip_adapter_mm.engine.runner import FewShotRunner
from tip_adapter_mm.utils import cpu
from tip_adapter_mm.utils.cpu import (MAX_AUTO_WORKERS, cpu_plan,
                                      resolve_num_workers,
                                      resolve_torch_threads)
from conftest import CONFIGS


def expected(cores: int, gpus: int, ranks: int):
    """The rule, written out case by case: a rank's share of the cores;
    without a GPU one worker per four cores beyond the first, one core
    kept for the process's Python work and torch the rest (>= 1); with
    GPUs every core but one a worker (at least one), torch the rest."""
    share = cores // ranks if cores >= ranks else 1
    if gpus:
        workers = 1 if share <= 2 else min(share - 1, MAX_AUTO_WORKERS)
        threads = share - workers if share > workers else 1
    else:
        workers = len([k for k in range(1, MAX_AUTO_WORKERS + 1)
                       if 1 + 4 * k <= share])
        threads = share - workers - 1 if share - workers > 2 else 1
    return workers, threads


CASES = [
    # (cores, gpus, local ranks) -> (workers, threads), worked by hand
    ((2, 0, 1), (0, 1)),    # this machine: no workers, one torch thread
    ((2, 0, 2), (0, 1)),    # two CPU ranks on two cores: one thread each
    ((3, 0, 2), (0, 1)),
    ((4, 0, 1), (0, 3)),
    ((8, 0, 1), (1, 6)),
    ((16, 0, 1), (3, 12)),
    ((64, 0, 4), (3, 12)),
    ((1, 1, 1), (1, 1)),    # a GPU keeps a decoding worker on one core
    ((16, 1, 1), (8, 8)),
    ((16, 8, 8), (1, 1)),
    ((96, 8, 8), (8, 4)),
    ((4, 2, 2), (1, 1)),
]


@pytest.mark.parametrize('machine,numbers', CASES)
def test_rule_by_hand(machine, numbers):
    plan = cpu_plan(*machine)
    assert (plan.workers, plan.threads) == numbers == expected(*machine)


def test_rule_never_oversubscribes():
    for cores in range(1, 40):
        for ranks in range(1, 9):
            for gpus in (0, 1, 8):
                plan = cpu_plan(cores, gpus, ranks)
                assert (plan.workers, plan.threads) == expected(
                    cores, gpus, ranks)
                assert plan.threads >= 1 and plan.workers >= 0
                if cores >= 2 * ranks:
                    # threads and workers of all ranks fit in the cores
                    assert ranks * (plan.threads + plan.workers) <= cores


def test_rule_refuses_nonsense():
    with pytest.raises(ValueError, match='cores=0'):
        cpu_plan(0, 0, 1)


def test_resolve_values(monkeypatch):
    plan = cpu_plan(16, 0, 1)
    assert resolve_num_workers('auto', plan) == 3
    assert resolve_num_workers(5, plan) == 5  # a number is kept
    with pytest.raises(ValueError, match="train_dataloader.num_workers='4'"):
        resolve_num_workers('4', plan, 'train_dataloader.num_workers')
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    assert resolve_torch_threads('auto', plan) == 12
    assert resolve_torch_threads(2, plan) == 2
    assert resolve_torch_threads(None, plan) is None
    with pytest.raises(ValueError, match='env_cfg.torch_threads=0'):
        resolve_torch_threads(0, plan)
    monkeypatch.setenv('OMP_NUM_THREADS', '1')  # the user's: kept
    assert resolve_torch_threads('auto', plan) is None
    assert resolve_torch_threads(2, plan) is None
    # ... unless the user's environment had none (MMEngine sets it to 1 in
    # distributed runs; the runner reads the variable before that).
    assert resolve_torch_threads('auto', plan, omp_num_threads='') == 12


def test_local_ranks_from_the_launcher(monkeypatch):
    monkeypatch.delenv('LOCAL_WORLD_SIZE', raising=False)
    monkeypatch.delenv('SLURM_NTASKS_PER_NODE', raising=False)
    assert cpu.local_ranks() == 1
    monkeypatch.setenv('SLURM_NTASKS_PER_NODE', '4')
    assert cpu.local_ranks() == 4
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '2')  # torchrun's wins
    assert cpu.local_ranks() == 2


class Toy(Dataset):

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> int:
        return index


def machine(monkeypatch, cores: int, ranks: int) -> None:
    monkeypatch.setattr(cpu, 'available_cores', lambda: cores)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setenv('LOCAL_WORLD_SIZE', str(ranks))


def loader_cfg(num_workers, **kwargs) -> dict:
    return dict(dataset=Toy(), batch_size=2, num_workers=num_workers,
                sampler=dict(type='DefaultSampler', shuffle=False), **kwargs)


@pytest.mark.filterwarnings('ignore:This DataLoader will create')
def test_auto_resolved_in_the_built_loader(monkeypatch):
    machine(monkeypatch, cores=16, ranks=1)
    loader = FewShotRunner.build_dataloader(
        loader_cfg('auto', persistent_workers=True))
    assert loader.num_workers == expected(16, 0, 1)[0] == 3
    assert loader.persistent_workers
    machine(monkeypatch, cores=16, ranks=4)
    assert FewShotRunner.build_dataloader(
        loader_cfg('auto')).num_workers == 0
    # No worker: the options DataLoader refuses without workers dropped.
    machine(monkeypatch, cores=2, ranks=1)
    loader = FewShotRunner.build_dataloader(
        loader_cfg('auto', persistent_workers=True, prefetch_factor=4))
    assert loader.num_workers == 0 and not loader.persistent_workers
    # A number is kept, whatever the machine.
    assert FewShotRunner.build_dataloader(loader_cfg(3)).num_workers == 3


def test_auto_resolved_for_encoding(monkeypatch):
    machine(monkeypatch, cores=12, ranks=1)
    cfg = loader_cfg('auto', persistent_workers=True)
    encoding = encoding_loader_cfg(cfg, pin_memory=False)
    assert encoding['num_workers'] == 2 and encoding['prefetch_factor'] == 4
    assert cfg['num_workers'] == 'auto'  # the config is not changed
    machine(monkeypatch, cores=2, ranks=1)
    encoding = encoding_loader_cfg(cfg, pin_memory=False)
    assert encoding['num_workers'] == 0 and 'prefetch_factor' not in encoding
    assert encoding_loader_cfg(loader_cfg(5), False)['num_workers'] == 5


def test_base_configs_ask_for_auto():
    """Every loader of the dataset bases (and the image-training
    schedules) is 'auto'; the features loader of Tip-Adapter-F keeps 0."""
    for name in ('folder_fewshot', 'coop_fewshot', 'imagenet_fewshot'):
        cfg = Config.fromfile(str(CONFIGS / '_base_/datasets' / f'{name}.py'))
        for split in ('fewshot', 'val', 'test'):
            loader = cfg[f'{split}_dataloader']
            assert loader.num_workers == 'auto', (name, split)
    for name in ('vpt', 'clip_lora'):
        text = (CONFIGS / '_base_/schedules' / f'{name}.py').read_text()
        assert "num_workers='auto'" in text and 'num_workers=8' not in text
    assert 'num_workers=0' in (CONFIGS / '_base_/schedules' /
                               'tip_adapter_f.py').read_text()
