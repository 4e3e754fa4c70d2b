"""What tools/train.py and tools/test.py share: arguments, config, runner."""
import argparse
import inspect
import os
import os.path as osp
from typing import Any, Dict

from mmengine.config import Config, DictAction
from mmengine.runner import Runner

from .dist import setup_distributed

#: Top-level keys MMEngine's Runner reads, which a config may leave unset.
RUNNER_KEYS = set(inspect.signature(Runner.__init__).parameters) | {
    'runner_type', 'few_shot_cfg', 'model_wrapper_cfg', 'work_dir',
    'show_config'
}


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """``--work-dir``, ``--cfg-options``, ``--launcher``, ``--local-rank``,
    ``--show-config``."""
    parser.add_argument(
        '--work-dir',
        help='the directory for logs, checkpoints, search reports and '
        'saved features (default: work_dirs/<config name>)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, key=value, e.g. '
        'fewshot_dataloader.dataset.num_shots=8; a key the config does not '
        'have is an error')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    parser.add_argument(
        '--show-config',
        action='store_true',
        help="also print MMEngine's environment, config and hook-order "
        "dumps on the screen (they are always in the work dir's log file; "
        "log_level='DEBUG' prints them too)")


def _registered_class(type_name: Any):
    """The class a config ``type`` names in MMPretrain's registries."""
    if not isinstance(type_name, str):
        return type_name
    from mmpretrain import registry
    for name in dir(registry):
        reg = getattr(registry, name)
        if hasattr(reg, 'get') and hasattr(reg, 'module_dict'):
            try:
                found = reg.get(type_name)
            except Exception:  # a registry that cannot resolve the name
                found = None
            if found is not None:
                return found
    return None


def _accepts(node: Dict[str, Any], key: str) -> bool:
    """Whether the class of a ``dict(type=...)`` takes argument ``key``."""
    cls = _registered_class(node.get('type'))
    if cls is None:
        return 'type' in node  # unknown type: cannot tell, let it build
    params = inspect.signature(cls).parameters.values()
    return any(p.name == key or p.kind == p.VAR_KEYWORD for p in params)


def check_cfg_options(cfg: Config, options: Dict[str, Any]) -> None:
    """Refuse ``--cfg-options`` keys that name nothing in ``cfg``.

    A key may add a new leaf only where it is an argument of the class the
    enclosing ``dict(type=...)`` builds, or a top-level Runner setting.

    Raises:
        KeyError: naming the key, where it stops matching and what is there.
    """
    for key in options:
        parts = key.split('.')
        node: Any = cfg.to_dict()
        for depth, part in enumerate(parts):
            where = '.'.join(parts[:depth]) or 'the config'
            last = depth == len(parts) - 1
            if isinstance(node, (list, tuple)):
                if not part.isdigit() or int(part) >= len(node):
                    raise KeyError(
                        f'--cfg-options {key}: {where} is a list of '
                        f'{len(node)} items; {part!r} is not an index of it.')
                node = node[int(part)]
            elif isinstance(node, dict):
                if part in node:
                    node = node[part]
                    continue
                if (depth == 0 and part in RUNNER_KEYS) or (
                        last and _accepts(node, part)):
                    break
                raise KeyError(
                    f'--cfg-options {key}: {where} has no key {part!r}'
                    + (f" and {node.get('type')} takes no such argument"
                       if 'type' in node else '')
                    + f'. Keys there: {sorted(node)}.')
            else:
                raise KeyError(f'--cfg-options {key}: {where} is a '
                               f'{type(node).__name__}, not a dict or list.')


def load_config(args: argparse.Namespace) -> Config:
    """The config of ``args.config`` with the common arguments applied."""
    if not osp.isfile(args.config):
        raise FileNotFoundError(f'Config file {args.config!r} not found.')
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if getattr(args, 'show_config', False):
        cfg.show_config = True
    if args.cfg_options is not None:
        check_cfg_options(cfg, args.cfg_options)
        cfg.merge_from_dict(args.cfg_options)
        # Head values set here are kept by the hyperparameter search.
        from ..engine.hooks.search_hook import keep_hand_set_hyperparameters
        keep_hand_set_hyperparameters(cfg, args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    return cfg


def build_runner(cfg: Config) -> Runner:
    """Set up distribution (gloo on CPU) and build the config's runner."""
    from mmpretrain.registry import RUNNERS
    setup_distributed(cfg, cfg.launcher)
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def save_adapted_model(runner: Runner, path: str) -> None:
    """Save what the adapted model needs (cache, zero-shot weights,
    hyperparameters; not the frozen towers) as an MMEngine checkpoint that
    ``tools/test.py CONFIG PATH`` and the inferencer load.

    Raises:
        FileExistsError: ``path`` exists; nothing is overwritten.
    """
    import torch
    from mmengine.model import is_model_wrapper
    from mmengine.runner.checkpoint import get_state_dict

    if osp.exists(path):
        raise FileExistsError(f'{path} exists; choose another path, it is '
                              'not overwritten.')
    model = runner.model.module if is_model_wrapper(
        runner.model) else runner.model
    checkpoint = dict(
        meta=dict(
            cfg=runner.cfg.pretty_text,
            seed=runner.seed,
            experiment_name=runner.experiment_name,
            dataset_meta=dict(runner.test_dataloader.dataset.metainfo)),
        state_dict=get_state_dict(model),
        message_hub=runner.message_hub.state_dict())
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}'
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)
