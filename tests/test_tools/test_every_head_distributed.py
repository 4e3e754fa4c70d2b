"""Every registered head on 2 gloo processes gives what it gives on 1;
2 simulated nodes train like 1 process; the slurm scripts build the srun
command MMPretrain's do.

One driver (``dist_every_head.py``, next to this file) runs every head's
config through ``FewShotRunner`` in a single launch, once with one process
and once under ``torch.distributed.run --nproc_per_node 2``: fit, search,
train (the trained heads, 2 epochs), test. Searched hyperparameters and the
test top-1 must be equal, the test scores and the head's state equal
within float32 round-off.
"""
import importlib.util
import json
import os
import os.path as osp
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple
from unittest import mock

import numpy as np
import pytest
import torch
from conftest import PORT_TAKEN, REPO, free_port, tiny_config

from mmpretrain.registry import MODELS
from tip_adapter_mm.models import heads as heads_module
from tip_adapter_mm.models.heads import FewShotHead

DRIVER = Path(__file__).with_name('dist_every_head.py')
EPOCHS = 2
#: Trained heads: 2 epochs, 4 samples a step summed over processes, a
#: constant learning rate (the recipes' warm-up would leave the tiny run
#: at 1e-5 of it), high enough that every trained tensor moves well above
#: float32 round-off.
TRAIN = (f'train_cfg = dict(max_epochs={EPOCHS}, global_batch_size=4)\n'
         'param_scheduler = None\n')

#: case -> (model base, schedule, ``head`` overrides, extra config lines).
#: Each case inherits its method's real model base and schedule (as its
#: experiment configs do); only sizes are made tiny.
CASES: Dict[str, Tuple[str, str, str, str]] = {
    'zero_shot': ('tip_adapter_rn50', 'tip_adapter',
                  "_delete_=True, type='ZeroShotHead'", ''),
    'tip': ('tip_adapter_rn50', 'tip_adapter', 'search_step=(20, 10)', ''),
    'tip_f': ('tip_adapter_rn50', 'tip_adapter_f',
              'search_step=(20, 10), train_cache_keys=True', TRAIN),
    'dual_cache': (
        'tip_adapter_rn50_dual_cache_resnet50', 'tip_adapter',
        'search_step=(10, 5), second_search_step=(10, 5)',
        # The tiny CLIP tower again, on ImageNet-normalised images: a
        # second encoder with other features and no download.
        "model['second_backbone'] = dict(clip, _delete_=True, "
        "type='OpenCLIPVisualBackbone')\n"
        "model['second_neck'] = None\n"),
    'cache_only': (
        'cache_only_resnet50', 'tip_adapter', 'search_step=20',
        "model['backbone'] = dict(clip, _delete_=True, "
        "type='OpenCLIPVisualBackbone')\n"
        "model['neck'] = None\nmodel.pop('text_encoder')\n"),
    'ape': ('tip_adapter_rn50', 'tip_adapter',
            "_delete_=True, type='APEHead', feat_num=16, "
            'search_scale=(7, 7, 0.5), search_step=(10, 5, 3)', ''),
    'gda': ('tip_adapter_rn50', 'tip_adapter',
            "_delete_=True, type='GDAHead', "
            'alpha_grid=(1e-3, 0.1, 1.0, 10.0)', ''),
    'ncm': ('tip_adapter_rn50', 'tip_adapter',
            "_delete_=True, type='NCMHead'",
            "model['text_encoder'] = None\n"),
    'linear_probe': ('linear_probe_rn50', 'tip_adapter',
                     'c_grid=[0.1, 1.0, 10.0]', "model.pop('text_encoder')\n"),
    'lp_plus_plus': ('lp_plus_plus_rn50', 'tip_adapter',
                     'epochs=20, snapshot_interval=5', ''),
    'proker': ('proker_rn50', 'tip_adapter',
               'beta_range=(1.5, 3.0, 3), lmbda_range=(0.05, 0.25, 3)', ''),
    'taskres': ('taskres_rn50', 'taskres', '', TRAIN),
    'clap': ('clap_rn50', 'clap', '', TRAIN),
    'clip_adapter': (
        'clip_adapter_rn50', 'clip_adapter', '',
        TRAIN + 'optim_wrapper = dict(optimizer=dict(lr=0.05))\n'),
    # CoOp: 4 context vectors in the tiny text tower (the tower is rebuilt
    # from the config's weights on every rank, never broadcast or saved).
    'coop': ('coop_rn50', 'coop', 'num_context=4',
             TRAIN + 'optim_wrapper = dict(optimizer=dict(lr=0.05))\n'),
    # CoCoOp: CoOp's context from 'a photo of a' plus a meta-net (hidden
    # width 32 // 4) of each image's feature; one text pass per image.
    'cocoop': ('cocoop_rn50', 'cocoop', 'reduction=4',
               TRAIN + 'optim_wrapper = dict(optimizer=dict(lr=0.05))\n'),
    # ProLIP: pre-projection features, full batch (global_batch_size
    # 'all'), its 300 views cut to 3.
    'prolip': ('prolip_rn50', 'prolip', '',
               f'train_cfg = dict(max_epochs={EPOCHS})\n'
               'param_scheduler = None\n'
               'optim_wrapper = dict(optimizer=dict(lr=1e-3))\n'),
    # Meta-Adapter: the class-agnostic attention over each class's support
    # features (AdamW; lr 1e-2 so that 6 steps move every tensor).
    'meta_adapter': (
        'meta_adapter_rn50', 'meta_adapter', '',
        TRAIN + 'optim_wrapper = dict(optimizer=dict(lr=1e-2))\n'),
    # VPT: 2 deep prompt tokens in the tiny 1-layer ViT; MaPLe: coupled
    # prompts at depth 1 (the tiny towers' only layer). Both re-encode the
    # few-shot images at every step: a fixed resize, so that the 2 ranks'
    # half-batches draw nothing at random.
    'vpt': ('vpt_vit_b16', 'vpt', 'num_prompts=2',
            TRAIN + 'optim_wrapper = dict(optimizer=dict(lr=0.5))\n'
            'train_dataloader = dict(num_workers=0, '
            'persistent_workers=False)\n'
            "fewshot_dataloader['dataset']['dataset']['pipeline'] = [\n"
            "    dict(type='LoadImageFromFile'),\n"
            "    dict(type='Resize', scale=(224, 224)),\n"
            "    dict(type='PackInputs')]\n"),
    'maple': ('maple_vit_b16', 'maple', 'prompt_depth=1',
              TRAIN + 'optim_wrapper = dict(optimizer=dict(lr=0.5))\n'
              'train_dataloader = dict(num_workers=0, '
              'persistent_workers=False)\n'
              "fewshot_dataloader['dataset']['dataset']['pipeline'] = [\n"
              "    dict(type='LoadImageFromFile'),\n"
              "    dict(type='Resize', scale=(224, 224)),\n"
              "    dict(type='PackInputs')]\n"),
    # CLIP-LoRA: rank-2 factors on q/k/v of both tiny towers, trained on
    # the re-encoded few-shot images; no dropout and a fixed resize, so
    # that the 2 ranks' half-batches draw nothing at random.
    'clip_lora': (
        'clip_lora_vit_b16', 'clip_lora', 'dropout=0.0',
        TRAIN + 'optim_wrapper = dict(optimizer=dict(lr=1e-2))\n'
        'train_dataloader = dict(num_workers=0, persistent_workers=False)\n'
        "fewshot_dataloader['dataset']['dataset']['pipeline'] = [\n"
        "    dict(type='LoadImageFromFile'),\n"
        "    dict(type='Resize', scale=(224, 224)),\n"
        "    dict(type='PackInputs')]\n"),
}


def head_config(path: Path, case: str, tiny_clip: Dict[str, str],
                data_root: Path) -> Path:
    """The tiny config of ``case``: its method's real bases, the tiny CLIP
    and the generated folders (3 classes, 4 shots, 3 views)."""
    model, schedule, head, extra = CASES[case]
    separator = ', ' if head else ''
    return tiny_config(path, tiny_clip, data_root, schedule=schedule,
                       extra=extra, model_base=model,
                       head=f'dict({head}{separator}num_classes=3, '
                       'topk=(1, ))')


def subprocess_env() -> Dict[str, str]:
    return dict(os.environ,
                PYTHONPATH=str(REPO),
                OMP_NUM_THREADS='1',
                PATH=osp.dirname(sys.executable) + os.pathsep +
                os.environ.get('PATH', ''))


def launch(commands: List[List[str]], envs: List[Dict[str, str]],
           timeout: float = 600) -> Tuple[List[str], List[int]]:
    """Start ``commands`` together and wait for all; once one fails, the
    others get 20 s before they are killed (a rank whose peer died would
    wait for it until gloo's timeout). Returns outputs and exit codes."""
    with tempfile.TemporaryDirectory() as logs:
        files = [open(osp.join(logs, f'{i}.log'), 'w+')
                 for i in range(len(commands))]
        procs = [
            subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f,
                             stderr=subprocess.STDOUT, text=True)
            for cmd, env, f in zip(commands, envs, files)
        ]
        deadline = time.monotonic() + timeout
        try:
            while any(p.poll() is None for p in procs):
                if any(p.poll() for p in procs):
                    deadline = min(deadline, time.monotonic() + 20)
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
        outputs = []
        for f in files:
            f.seek(0)
            outputs.append(f.read())
            f.close()
    return outputs, [p.returncode for p in procs]


def launch_retrying(make, attempts: int = 3) -> List[str]:
    """``launch(*make(port))`` on a fresh rendezvous port, again if the port
    was taken between choosing and binding it; the outputs."""
    for attempt in range(attempts):
        outputs, codes = launch(*make(free_port()))
        if not any(codes):
            return outputs
        joined = '\n'.join(outputs)
        if attempt + 1 < attempts and any(p in joined for p in PORT_TAKEN):
            continue
        failed = next(i for i, c in enumerate(codes) if c)
        raise AssertionError(f'command {failed} exited with {codes[failed]}'
                             f':\n{outputs[failed][-6000:]}')


def registered_heads() -> set:
    """Every concrete few-shot head: exported by the heads package or
    registered in MMPretrain's MODELS registry."""
    exported = {getattr(heads_module, n) for n in heads_module.__all__}
    registered = set(MODELS.module_dict.values())
    return {
        cls.__name__
        for cls in exported | registered
        if isinstance(cls, type) and issubclass(cls, FewShotHead)
        and MODELS.get(cls.__name__) is cls
    }


@pytest.fixture(scope='module')
def runs(tiny_clip, image_folders, tmp_path_factory):
    """The driver over every case, on 1 process and on 2 (started
    together); returns the config folder and both runs' records."""
    root = tmp_path_factory.mktemp('every_head')
    configs = [
        str(head_config(root / f'{case}.py', case, tiny_clip, image_folders))
        for case in CASES
    ]

    def make(port: str):
        one = [sys.executable, str(DRIVER), '--out', str(root / 'one.json'),
               '--work-dir', str(root / 'one'), *configs]
        two = [sys.executable, '-m', 'torch.distributed.run',
               '--nproc_per_node', '2', '--master_port', port, str(DRIVER),
               '--out', str(root / 'two.json'), '--work-dir',
               str(root / 'two'), *configs]
        return [one, two], [subprocess_env()] * 2

    launch_retrying(make)
    return root, {
        n: json.loads((root / f'{n}.json').read_text())
        for n in ('one', 'two')
    }


def max_abs(x: np.ndarray) -> float:
    return float(np.abs(x).max()) if x.size else 0.0


def assert_same_state(case: str, one: dict, two: dict) -> None:
    """Each floating-point tensor of the head equal within float32
    round-off of its own scale (GDA's weights reach 6e4)."""
    assert set(one) == set(two), case
    for name in one:
        a, b = np.asarray(one[name]), np.asarray(two[name])
        assert a.shape == b.shape, f'{case}: {name}'
        assert max_abs(b - a) <= 1e-5 * max(1.0, max_abs(a)), (
            f'{case}: {name} differs by {max_abs(b - a):.3g} '
            f'(scale {max_abs(a):.3g})')


def updates(record: dict) -> Dict[str, np.ndarray]:
    """What training did to each trainable tensor: final - fitted."""
    return {
        name: np.asarray(record['state'][name]) -
        np.asarray(record['fitted_state'][name])
        for name in record['trainable']
    }


def test_every_head_two_processes_equal_one(runs):
    _, found = runs
    one, two = found['one'], found['two']
    assert set(one) == set(two) == set(CASES)
    # Coverage: a head added to the package without a case here fails.
    assert {r['head'] for r in one.values()} == registered_heads()
    # Tip-Adapter-F: TipAdapterHead with train_cache_keys=True.
    assert one['tip_f']['trainable'] == ['cache.keys']
    assert one['tip']['trainable'] == []
    for case in CASES:
        a, b = one[case], two[case]
        assert (a['world_size'], b['world_size']) == (1, 2), case
        assert a['head'] == b['head'], case
        assert a['searched'] == b['searched'], case
        # Same grid, same counts, same first maximum: equal, not close.
        assert a['hyperparameters'] == b['hyperparameters'], case
        assert a['top1'] == b['top1'], case
        assert a['labels'] == b['labels'], case
        # Every test image once, in order, though 2 ranks pad 15 to 16.
        assert a['sample_idx'] == b['sample_idx'] == list(range(15)), case
        np.testing.assert_allclose(b['scores'], a['scores'], rtol=0,
                                   atol=1e-5, err_msg=case)
        assert_same_state(case, a['state'], b['state'])
        if a['trains']:
            assert_same_state(case, a['fitted_state'], b['fitted_state'])
            assert a['trainable'] == b['trainable'], case
            # The steps themselves agree to 1e-4 of their size: the 2
            # ranks' half-batches add up to the 1-process batch.
            step_one, step_two = updates(a), updates(b)
            for name, step in step_one.items():
                assert max_abs(step_two[name] - step) <= 1e-4 * max_abs(
                    step), f'{case}: {name}'


def test_runs_are_not_trivial(runs):
    """Guards the comparison: the searched heads did search, every trained
    tensor moved well beyond round-off, the scores are the top-1."""
    _, found = runs
    one = found['one']
    for case in ('tip', 'tip_f', 'dual_cache', 'cache_only', 'ape', 'gda',
                 'linear_probe', 'lp_plus_plus', 'proker'):
        assert one[case]['searched'], case
    assert set(one['dual_cache']['hyperparameters']) == {
        'alpha', 'beta', 'alpha2', 'beta2'
    }
    trained = {case for case, r in one.items() if r['trains']}
    assert trained == {'tip_f', 'taskres', 'clap', 'clip_adapter', 'prolip',
                       'coop', 'cocoop', 'vpt', 'maple',
                       'meta_adapter', 'clip_lora'}
    for case in trained:
        assert one[case]['trainable'], case
        for name, step in updates(one[case]).items():
            assert max_abs(step) > 1e-3, f'{case}: {name} did not train'
    for case, record in one.items():
        scores = np.asarray(record['scores'])
        assert scores.shape == (15, 3), case
        np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-9)
        hits = scores.argmax(axis=1) == np.asarray(record['labels'])
        assert record['top1'] == pytest.approx(100 * hits.mean(), abs=1e-9)


# -- 2 nodes x 1 process, on one machine -------------------------------
def test_two_nodes_train_like_one_process(runs):
    """tools/dist_train.sh on 2 simulated nodes (NNODES=2, NODE_RANK 0 and
    1, MASTER_ADDR, PORT), started together on Tip-Adapter-F's tiny
    config, sharing the work dir as nodes share a filesystem: both finish,
    and the result is the 1-process driver run's."""
    root, found = runs
    one = found['one']['tip_f']
    work_dir = root / 'two_nodes'

    def make(port: str):
        command = ['bash', 'tools/dist_train.sh', str(root / 'tip_f.py'), '1',
                   '--work-dir', str(work_dir)]
        envs = [dict(subprocess_env(), NNODES='2', NODE_RANK=str(rank),
                     MASTER_ADDR='127.0.0.1', PORT=port)
                for rank in (0, 1)]
        return [command, command], envs

    node0, node1 = launch_retrying(make)
    assert 'global_batch_size 4: 2 per process x 2' in node0
    assert 'Saved the searched model' in node0
    top1 = [float(x) for x in re.findall(r'accuracy/top1: ([0-9.]+)', node0)]
    assert top1 and top1[-1] == pytest.approx(one['top1'], abs=1e-4)
    state = torch.load(work_dir / 'final_searched.pth', map_location='cpu',
                       weights_only=False)['state_dict']
    two = {k[len('head.'):]: v.double().numpy().tolist()
           for k, v in state.items()
           if k.startswith('head.') and v.is_floating_point()}
    assert_same_state('two nodes', one['state'], two)
    assert float(state['head.alpha']) == one['hyperparameters']['alpha']
    assert float(state['head.cache.beta']) == one['hyperparameters']['beta']
    assert node1.count('accuracy/top1') == 0  # only rank 0 logs


# -- The launch scripts' commands ----------------------------------------
#: A stand-in for ``srun`` or ``python`` that records its arguments, one a
#: line, and the environment variables the launch depends on.
FAKE = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$FAKE_LOG"
printf 'PYTHONPATH=%s\\nMASTER_PORT=%s\\n' "$PYTHONPATH" "$MASTER_PORT" \\
    > "$FAKE_LOG.env"
"""

#: Settings the scripts read from the environment.
SCRIPT_ENV = ('GPUS', 'GPUS_PER_NODE', 'CPUS_PER_TASK', 'SRUN_ARGS', 'PORT',
              'MASTER_PORT', 'NNODES', 'NODE_RANK', 'MASTER_ADDR')


def fake_run(tmp_path: Path, program: str, script: str, *args: str,
             **env: str) -> Tuple[List[str], Dict[str, str]]:
    """Run ``tools/<script> ARGS`` with a fake ``program`` first on PATH;
    the arguments it received and the environment it saw."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / program
    fake.write_text(FAKE)
    fake.chmod(0o755)
    log = tmp_path / f'{program}.log'
    base = {k: v for k, v in subprocess_env().items() if k not in SCRIPT_ENV}
    proc = subprocess.run(
        ['bash', osp.join('tools', script), *args], cwd=REPO,
        env=dict(base, PATH=f'{bin_dir}{os.pathsep}{base["PATH"]}',
                 FAKE_LOG=str(log), **env),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=60)
    assert proc.returncode == 0, proc.stdout
    seen = dict(
        line.split('=', 1)
        for line in Path(f'{log}.env').read_text().splitlines())
    return log.read_text().splitlines(), seen


def test_slurm_train_builds_the_srun_command(tmp_path):
    argv, env = fake_run(
        tmp_path, 'srun', 'slurm_train.sh', 'gpu_part', 'tipf',
        'configs/a b.py', 'work_dirs/tipf', '--cfg-options',
        'train_cfg.max_epochs=3', GPUS='16', GPUS_PER_NODE='8',
        CPUS_PER_TASK='4', SRUN_ARGS='--time=2:00:00 --qos=normal',
        PORT='29777')
    tools = str(REPO / 'tools')
    assert argv == [
        '-p', 'gpu_part', '--job-name=tipf', '--gres=gpu:8', '--ntasks=16',
        '--ntasks-per-node=8', '--cpus-per-task=4', '--kill-on-bad-exit=1',
        '--time=2:00:00', '--qos=normal', 'python', '-u',
        f'{tools}/train.py', 'configs/a b.py', '--work-dir=work_dirs/tipf',
        '--launcher=slurm', '--cfg-options', 'train_cfg.max_epochs=3'
    ]
    assert env['PYTHONPATH'].split(os.pathsep)[0] == f'{tools}/..'
    assert env['MASTER_PORT'] == '29777'


def test_slurm_defaults_and_test_checkpoint(tmp_path):
    argv, env = fake_run(tmp_path, 'srun', 'slurm_train.sh', 'p', 'j',
                         'c.py', 'w')
    assert argv[:8] == [
        '-p', 'p', '--job-name=j', '--gres=gpu:8', '--ntasks=8',
        '--ntasks-per-node=8', '--cpus-per-task=5', '--kill-on-bad-exit=1'
    ]
    assert argv[8:] == ['python', '-u', f'{REPO}/tools/train.py', 'c.py',
                        '--work-dir=w', '--launcher=slurm']
    assert env['MASTER_PORT'] == ''  # MMEngine's default then
    # tools/test.py: the checkpoint is optional (training-free configs).
    argv, _ = fake_run(tmp_path, 'srun', 'slurm_test.sh', 'p', 'j', 'c.py',
                       'w/final_searched.pth', '--out', 'o.pkl')
    assert argv[8:] == ['python', '-u', f'{REPO}/tools/test.py', 'c.py',
                        'w/final_searched.pth', '--launcher=slurm', '--out',
                        'o.pkl']
    argv, _ = fake_run(tmp_path, 'srun', 'slurm_test.sh', 'p', 'j', 'c.py',
                       '--work-dir', 'w')
    assert argv[8:] == ['python', '-u', f'{REPO}/tools/test.py', 'c.py',
                        '--launcher=slurm', '--work-dir', 'w']


def test_dist_scripts_pass_nodes_and_checkpoint(tmp_path):
    """tools/dist_*.sh hand NNODES, NODE_RANK, MASTER_ADDR and PORT to
    torch.distributed.run, and dist_test.sh puts a checkpoint where
    tools/test.py's parser takes it: before --launcher (after it, argparse
    rejects it as an unrecognised argument)."""
    nodes = dict(NNODES='2', NODE_RANK='1', MASTER_ADDR='10.0.0.7',
                 PORT='29777')
    torchrun = ['-m', 'torch.distributed.run', '--nnodes=2', '--node_rank=1',
                '--master_addr=10.0.0.7', '--nproc_per_node=4',
                '--master_port=29777']
    test_argv, _ = fake_run(tmp_path, 'python', 'dist_test.sh', 'c.py', '4',
                            'w/final_searched.pth', '--out', 'o.pkl',
                            **nodes)
    assert test_argv == torchrun + ['tools/test.py', 'c.py',
                                    'w/final_searched.pth', '--launcher',
                                    'pytorch', '--out', 'o.pkl']
    argv, _ = fake_run(tmp_path, 'python', 'dist_test.sh', 'c.py', '4',
                       '--work-dir', 'w', **nodes)
    assert argv[len(torchrun):] == ['tools/test.py', 'c.py', '--launcher',
                                    'pytorch', '--work-dir', 'w']
    argv, _ = fake_run(tmp_path, 'python', 'dist_train.sh', 'c.py', '4',
                       '--work-dir', 'w', **nodes)
    assert argv == torchrun + ['tools/train.py', 'c.py', '--launcher',
                               'pytorch', '--work-dir', 'w']
    # tools/test.py parses what dist_test.sh passes it.
    spec = importlib.util.spec_from_file_location('test_tool',
                                                  REPO / 'tools' / 'test.py')
    test_tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test_tool)
    with mock.patch.object(sys, 'argv', test_argv[len(torchrun):]):
        args = test_tool.parse_args()
    assert (args.config, args.checkpoint, args.launcher, args.out) == (
        'c.py', 'w/final_searched.pth', 'pytorch', 'o.pkl')
