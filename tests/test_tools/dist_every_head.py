"""Run several configs through the real runner in ONE launch, on one process
or under ``torch.distributed.run``, and write what each produced to JSON.

    python tests/test_tools/dist_every_head.py --out R.json --work-dir W \\
        CONFIG [CONFIG ...]
    python -m torch.distributed.run --nproc_per_node 2 \\
        tests/test_tools/dist_every_head.py --out R.json --work-dir W ...

For each config (its file stem names the case): ``FewShotRunner.from_cfg``;
``runner.train()`` when the config has a ``train_cfg``; then
``runner.test()``, its predictions gathered from every rank by MMEngine's
``DumpResults``. All configs share one feature store (``W/features``), so
each image is encoded once per launch and encoder. Rank 0 writes, per
case: the head's class, its hyperparameters and whether they were
searched, the test top-1, the test scores ``(M, N)`` in sample order, the
head's floating-point state, and for a trained head its state before
training. ``tests/test_tools/
test_every_head_distributed.py`` compares a 2-process launch with a
1-process one.

Paying the interpreter, PyTorch and MMEngine start-up once for every head
is what keeps that comparison cheap enough for the test suite.
"""
import argparse
import gc
import json
import os
import os.path as osp
import pickle
from typing import Any, Dict

import torch
from mmengine.config import Config
from mmengine.dist import get_rank, get_world_size
from mmengine.evaluator import DumpResults

from tip_adapter_mm.engine.few_shot_builder import unwrap
from tip_adapter_mm.engine.runner import FewShotRunner
from tip_adapter_mm.utils import setup_distributed, teardown_distributed


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('configs', nargs='+', help='config files')
    parser.add_argument('--out', required=True, help='JSON written by rank 0')
    parser.add_argument('--work-dir', required=True,
                        help='one sub-folder per config, plus features/')
    return parser.parse_args()


def head_state(head: torch.nn.Module) -> Dict[str, Any]:
    """The head's floating-point tensors (parameters and buffers) as nested
    lists, by state-dict name."""
    return {
        name: value.detach().double().cpu().tolist()
        for name, value in head.state_dict().items()
        if torch.is_tensor(value) and value.is_floating_point()
    }


def run_case(config: str, work_root: str, launcher: str) -> Dict[str, Any]:
    """Train (if the config trains) and test one config; the record rank 0
    writes (None on the other ranks)."""
    name = osp.splitext(osp.basename(config))[0]
    cfg = Config.fromfile(config)
    cfg.work_dir = osp.join(work_root, name)
    cfg.launcher = launcher
    cfg.few_shot_cfg.feature_dir = osp.join(work_root, 'features')
    setup_distributed(cfg, launcher)
    runner = FewShotRunner.from_cfg(cfg)
    trains = cfg.get('train_cfg') is not None
    # A runner that trains has fitted the head while it was built.
    fitted = head_state(unwrap(runner.model).head) if trains else None
    if trains:
        runner.train()
    dump = osp.join(cfg.work_dir, 'test_predictions.pkl')
    runner.test_evaluator.metrics.append(DumpResults(out_file_path=dump))
    metrics = runner.test()
    if get_rank() != 0:
        return None
    head = unwrap(runner.model).head
    with open(dump, 'rb') as f:
        results = sorted(pickle.load(f), key=lambda r: r['sample_idx'])
    return dict(
        head=type(head).__name__,
        trains=trains,
        world_size=get_world_size(),
        hyperparameters=dict(head.hyperparameters),
        searched=bool(head.searched),
        top1=float(metrics['accuracy/top1']),
        sample_idx=[int(r['sample_idx']) for r in results],
        labels=[int(r['gt_label']) for r in results],
        scores=[torch.as_tensor(r['pred_score']).double().tolist()
                for r in results],
        state=head_state(head),
        trainable=[n for n, p in head.named_parameters() if p.requires_grad],
        fitted_state=fitted)


def cheap_pretty_text(cfg: Config) -> str:
    """The config's own text: MMEngine formats the whole merged config with
    yapf for each log and checkpoint (0.3 s a time here); nothing compared
    by the test reads it."""
    return cfg.text


def main() -> None:
    args = parse_args()
    # Start-up costs that would dominate 15 tiny runs, not what is tested:
    # formatting configs, and the full garbage collection MMEngine's
    # datasets run when they serialise (0.5 s each with torch and
    # MMPretrain loaded). Objects alive now are left out of collections.
    Config.pretty_text = property(cheap_pretty_text)
    gc.freeze()
    launcher = 'pytorch' if int(os.environ.get('WORLD_SIZE', 1)) > 1 \
        else 'none'
    records = {}
    for config in args.configs:
        record = run_case(config, args.work_dir, launcher)
        if record is not None:
            records[osp.splitext(osp.basename(config))[0]] = record
        gc.collect()
        gc.freeze()
    if get_rank() == 0:
        tmp = f'{args.out}.tmp'
        with open(tmp, 'w') as f:
            json.dump(records, f)
        os.replace(tmp, args.out)


if __name__ == '__main__':
    main()
    teardown_distributed()
