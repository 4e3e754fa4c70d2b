"""Train (Tip-Adapter-F) with MMEngine's Runner, then test the result.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
        [--no-test] [--cfg-options k=v ...]
        [--launcher {none,pytorch,slurm,mpi}]
"""
import argparse

from mmengine.config import Config

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
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def main() -> None:
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
