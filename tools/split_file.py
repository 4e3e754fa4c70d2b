"""Write the exact few-shot images of a config to a split file, or convert
a CoOp/Dassl few-shot pickle to one.

    python tools/split_file.py export CONFIG OUT [--shots K] [--seed S]
        [--cfg-options k=v ...]
    python tools/split_file.py convert COOP_PKL OUT --config CONFIG
        [--shots K] [--seed S] [--no-class-name-check]
        [--cfg-options k=v ...]

``export`` builds ``fewshot_dataloader.dataset`` of CONFIG (the seeded draw,
or the split file it already reads) and writes its shots. ``convert`` reads
``split_fewshot/shot_{K}-seed_{S}.pkl`` (CoOp, CoCoOp, Tip-Adapter, APE,
GDA, LP++ ...; no Dassl needed), matches every image to the train split of
CONFIG (``fewshot_dataloader.dataset.dataset``) and writes our file. Use a
file with ``--cfg-options fewshot_dataloader.dataset.split_file=OUT``. An
existing OUT with other content is never overwritten.
"""
import argparse
import os.path as osp
import sys
from typing import Optional

from mmengine.config import Config, DictAction

from tip_adapter_mm.utils.cli import check_cfg_options


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Export the few-shot images of a config to a split '
        'file, or convert a CoOp few-shot pickle')
    commands = parser.add_subparsers(dest='command', required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument('--shots', type=int, help='K, images per class '
                         '(export: overrides the config; convert: default '
                         'from the file name)')
        sub.add_argument('--seed', type=int, help='seed of the draw '
                         '(export: overrides the config; convert: default '
                         'from the file name)')
        sub.add_argument(
            '--cfg-options',
            nargs='+',
            action=DictAction,
            help='override settings of the config, key=value; a key the '
            'config does not have is an error')

    export = commands.add_parser(
        'export', help='write the shots of CONFIG to OUT')
    export.add_argument('config', help='experiment or dataset config')
    export.add_argument('out', help='split file to write (JSON)')
    common(export)

    convert = commands.add_parser(
        'convert', help='CoOp shot_K-seed_S.pkl -> our split file')
    convert.add_argument('pkl', help="CoOp/Dassl few-shot pickle")
    convert.add_argument('out', help='split file to write (JSON)')
    convert.add_argument(
        '--config', required=True,
        help='config whose fewshot_dataloader.dataset.dataset is the train '
        'split the pickle was drawn from')
    convert.add_argument(
        '--no-class-name-check', action='store_true',
        help="accept class names in the pickle that differ from the "
        "dataset's (labels must still agree)")
    common(convert)
    return parser.parse_args(argv)


def load_config(path: str, cfg_options: Optional[dict]) -> Config:
    if not osp.isfile(path):
        raise FileNotFoundError(f'Config file {path!r} not found.')
    cfg = Config.fromfile(path)
    if cfg_options:
        check_cfg_options(cfg, cfg_options)
        cfg.merge_from_dict(cfg_options)
    if 'fewshot_dataloader' not in cfg:
        raise KeyError(f'{path} has no fewshot_dataloader: it defines no '
                       'few-shot images.')
    return cfg


def export(args: argparse.Namespace) -> str:
    from mmpretrain.registry import DATASETS
    from tip_adapter_mm.datasets import FewShotDataset, save_split_file

    cfg = load_config(args.config, args.cfg_options)
    dataset_cfg = cfg.fewshot_dataloader.dataset
    if args.shots is not None:
        dataset_cfg.num_shots = args.shots
    if args.seed is not None:
        dataset_cfg.seed = args.seed
    dataset = DATASETS.build(dataset_cfg)
    if not isinstance(dataset, FewShotDataset):
        raise TypeError(
            f'{args.config}: fewshot_dataloader.dataset is a '
            f'{type(dataset).__name__}; export needs a FewShotDataset.')
    split = save_split_file(dataset, args.out, cfg.get('dataset_name'))
    return (f'Wrote {len(split.samples)} shots ({split.num_shots} per '
            f'class, seed {split.seed}, {len(split.classes)} classes) to '
            f'{args.out} (sha256 {split.digest()})')


def convert(args: argparse.Namespace) -> str:
    from mmpretrain.registry import DATASETS
    from tip_adapter_mm.datasets.split_files import (convert_coop_split,
                                                     write_split_file)

    cfg = load_config(args.config, args.cfg_options)
    inner = cfg.fewshot_dataloader.dataset.get('dataset')
    if inner is None:
        raise KeyError(f'{args.config}: fewshot_dataloader.dataset has no '
                       'dataset (the train split the shots come from).')
    dataset = DATASETS.build(inner)
    dataset.full_init()
    split = convert_coop_split(
        args.pkl, dataset, num_shots=args.shots, seed=args.seed,
        dataset_name=cfg.get('dataset_name'),
        check_class_names=not args.no_class_name_check)
    digest = write_split_file(split, args.out)
    return (f'Converted {len(split.samples)} shots of {args.pkl} '
            f'({split.num_shots} per class, seed {split.seed}) to '
            f'{args.out} (sha256 {digest})')


def main(argv=None) -> None:
    args = parse_args(argv)
    message = export(args) if args.command == 'export' else convert(args)
    print(message)


if __name__ == '__main__':
    sys.exit(main())
