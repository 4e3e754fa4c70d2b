"""Train (Tip-Adapter-F) with MMEngine's Runner, then test the result.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
        [--precision {fp32,fp16,bf16}] [--no-test] [--cfg-options k=v ...]
        [--launcher {none,pytorch,slurm,mpi}] [--show-config]
"""
import argparse

from mmengine.config import Config
from mmengine.device import get_device
from mmengine.logging import print_log

from tip_adapter_mm.quiet import quiet_warnings
from tip_adapter_mm.utils import teardown_distributed
from tip_adapter_mm.utils.cli import add_common_args, build_runner, load_config


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Train a Tip-Adapter-F model (MMPretrain conventions)')
    parser.add_argument('config', help='train config file path')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from the given checkpoint, or from the latest one in '
        'the work dir when no path is given')
    parser.add_argument(
        '--amp', action='store_true', help='automatic mixed precision (GPU)')
    parser.add_argument(
        '--precision',
        choices=['fp32', 'fp16', 'bf16'],
        help='encode in this precision (few_shot_cfg.precision) and, for '
        "fp16/bf16, train with MMEngine's AmpOptimWrapper in that dtype "
        '(on a GPU; on the CPU only the encoding changes). Default: the '
        "config's precision, and --amp's training precision")
    parser.add_argument(
        '--no-test',
        action='store_true',
        help='do not evaluate the final (best, searched) model on the test '
        'split after training')
    add_common_args(parser)
    return parser.parse_args()


def apply_train_args(cfg: Config, args: argparse.Namespace) -> Config:
    if cfg.get('train_cfg') is None:
        raise ValueError(
            f'{args.config} has no train_cfg: it is a training-free config. '
            'Run it with tools/test.py, or train a tip_f_* config.')
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if getattr(args, 'precision', None) is not None:
        apply_precision(cfg, args.precision)
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


#: ``--precision`` -> AmpOptimWrapper's ``dtype``.
AMP_DTYPES = {'fp16': 'float16', 'bf16': 'bfloat16'}


def apply_precision(cfg: Config, precision: str) -> Config:
    """``--precision``: the encoding precision (``few_shot_cfg.precision``)
    and, for fp16/bf16, MMEngine's ``AmpOptimWrapper`` with that ``dtype``
    for training. MMEngine's AmpOptimWrapper refuses to run without a GPU
    (or NPU, MLU, MUSA): on the CPU the training stays fp32, said so."""
    if cfg.get('few_shot_cfg') is None:
        cfg.few_shot_cfg = dict()
    cfg.few_shot_cfg.precision = precision
    if precision == 'fp32':
        return cfg
    if get_device() in ('cpu', 'mps'):
        print_log(
            f'--precision {precision}: the features are encoded in '
            f"{precision}; training stays fp32 (MMEngine's AmpOptimWrapper "
            'needs a GPU, NPU, MLU or MUSA device).',
            logger='current')
        return cfg
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.dtype = AMP_DTYPES[precision]
    cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    return cfg


def main() -> None:
    quiet_warnings()
    args = parse_args()
    cfg = apply_train_args(load_config(args), args)
    runner = build_runner(cfg)
    runner.train()
    if not args.no_test and cfg.get('test_dataloader'):
        runner.test()


if __name__ == '__main__':
    main()
    # After a successful run only: a failed rank must not wait for the
    # others in a barrier.
    teardown_distributed()
