"""Evaluate a config (training-free Tip-Adapter needs no checkpoint).

    python tools/test.py CONFIG [CHECKPOINT] [--work-dir DIR] [--out F.pkl]
        [--precision {fp32,fp16,bf16}] [--cfg-options k=v ...]
        [--launcher {none,pytorch,slurm,mpi}] [--show-config]
"""
import argparse
import os

from mmengine.config import Config
from mmengine.evaluator import DumpResults

from mmengine.dist import get_rank

from tip_adapter_mm.quiet import quiet_warnings
from tip_adapter_mm.utils import teardown_distributed
from tip_adapter_mm.utils.cli import (add_common_args, build_runner,
                                      load_config, save_adapted_model)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Test a Tip-Adapter model (MMPretrain conventions)')
    parser.add_argument('config', help='test config file path')
    parser.add_argument(
        'checkpoint',
        nargs='?',
        default=None,
        help='checkpoint file; not needed for training-free Tip-Adapter, '
        'whose cache is built from the few-shot set')
    parser.add_argument(
        '--out', help='the file to dump predictions to (.pkl)')
    parser.add_argument(
        '--precision',
        choices=['fp32', 'fp16', 'bf16'],
        help='encode the images in this precision (few_shot_cfg.precision; '
        "fp16 on a GPU, bf16 on the CPU); default: the config's")
    parser.add_argument(
        '--save-model',
        metavar='PATH',
        help='after testing, save the adapted model (cache, zero-shot '
        'weights, searched hyperparameters) as a checkpoint for tools/'
        'test.py, tools/infer.py and the export; an existing file is not '
        'overwritten')
    add_common_args(parser)
    return parser.parse_args()


def apply_test_args(cfg: Config, args: argparse.Namespace) -> Config:
    """The checkpoint, ``--precision`` (``few_shot_cfg.precision``), and no
    train loop, optimizer or schedule (only testing)."""
    if args.checkpoint is not None:
        cfg.load_from = args.checkpoint
    if args.precision is not None:
        if cfg.get('few_shot_cfg') is None:
            cfg.few_shot_cfg = dict()
        cfg.few_shot_cfg.precision = args.precision
    for key in ('train_dataloader', 'train_cfg', 'optim_wrapper',
                'param_scheduler'):
        cfg[key] = None
    return cfg


def main() -> None:
    quiet_warnings()
    args = parse_args()
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        raise ValueError(f'--out must end with .pkl, got {args.out!r}')
    if args.save_model is not None and os.path.exists(args.save_model):
        raise FileExistsError(f'--save-model {args.save_model} exists; it is '
                              'not overwritten.')
    cfg = apply_test_args(load_config(args), args)
    runner = build_runner(cfg)
    if args.out is not None:
        runner.test_evaluator.metrics.append(
            DumpResults(out_file_path=args.out))
    runner.test()
    if args.save_model is not None and get_rank() == 0:
        save_adapted_model(runner, args.save_model)
        runner.logger.info(f'Saved the adapted model to {args.save_model}')


if __name__ == '__main__':
    main()
    # After a successful run only: a failed rank must not wait for the
    # others in a barrier.
    teardown_distributed()
