"""A Runner that owns the run's stored features and fits the head first."""
import inspect
import logging
import os
import os.path as osp
import re
from typing import Callable, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from mmengine.device import get_device
from mmengine.logging import MMLogger
from mmengine.runner import Runner
from torch.utils.data import DataLoader

from mmpretrain.registry import RUNNERS
from ...models.utils.weight_files import (CheckpointFileError,
                                          load_failure_reason)
from ...quiet import filter_console
from ...utils.cpu import (AUTO, CpuPlan, auto_loader_cfg, machine_cpu_plan,
                          resolve_torch_threads)
from ..few_shot_builder import FewShotBuilder, unwrap

#: What load_from, tools/test.py's CHECKPOINT and --resume take.
RUN_CHECKPOINT = ('a .pth file that tools/train.py or tools/test.py wrote '
                  'for this config (work_dirs/<config>/epoch_N.pth, '
                  'final_searched.pth or adapted_model.pth)')


@RUNNERS.register_module()
class FewShotRunner(Runner):
    """MMEngine's Runner, owning a :class:`FewShotBuilder`.

    1. ``runner.few_shot`` (built from the config's ``few_shot_cfg``) is the
       one owner of the run's stored features and of fitting the head:
       :class:`BuildCacheHook` and the loops (:class:`FewShotTrainLoop`,
       :class:`StoredFeaturesValLoop`, :class:`StoredFeaturesTestLoop`) ask
       it for what they need.
    2. When training is configured, the head is fitted (and the validation
       features are encoded) *before* the model is wrapped for DDP and
       before the optimizer exists, so that Tip-Adapter-F's learnable keys
       have their final shape when DDP and the optimizer register them, and
       the encoders do no work while training and validating.
       ``few_shot_cfg.protocol`` says what selects hyperparameters and the
       epoch (:class:`FewShotBuilder`); the config is checked for it first.
    3. ``val()`` and ``test()`` initialise the model (the weights of
       ``init_cfg``, e.g. MMPretrain backbones) before anything is encoded
       or a checkpoint is loaded; MMEngine's Runner initialises only in
       ``train()``.
    4. ``load_checkpoint`` (``load_from``, tools/test.py's CHECKPOINT) and
       ``resume`` (``--resume``) raise :class:`CheckpointFileError` naming
       the file and what was expected (missing file, not a checkpoint, a
       safe-load refusal, a checkpoint of another model with its key and
       shape differences), the library's error as ``__cause__``.
    5. The machine's cores are shared out (:mod:`tip_adapter_mm.utils.cpu`):
       dataloaders with ``num_workers='auto'`` get the workers of
       :func:`cpu_plan` (``build_dataloader``), torch gets its threads
       (``env_cfg.torch_threads``: ``'auto'`` when absent, a number, or
       None to leave torch's; ``OMP_NUM_THREADS`` in the environment is
       kept), and the choice is logged once.
    6. The environment, config and hook-order dumps MMEngine logs while
       the runner is built go to the work dir's log file only, unless the
       config has ``show_config=True`` (``--show-config``) or
       ``log_level='DEBUG'``; the console shows a repeated message once.

    Select it with ``runner_type = 'FewShotRunner'`` in the config.
    """

    def __init__(self, *args, **kwargs) -> None:
        bound = inspect.signature(Runner.__init__).bind(self, *args, **kwargs)
        cfg = bound.arguments.get('cfg') or {}
        self.few_shot = FewShotBuilder(**dict(cfg.get('few_shot_cfg') or {}))
        self.few_shot.check_config(cfg)
        self._trains = bound.arguments.get('train_cfg') is not None
        super().__init__(*args, **kwargs)

    def setup_env(self, env_cfg: dict) -> None:
        """MMEngine's set-up, then torch's threads from
        ``env_cfg.torch_threads`` (see :func:`resolve_torch_threads`)."""
        value = env_cfg.get('torch_threads', AUTO)
        # (MMEngine sets OMP_NUM_THREADS=1 in a distributed run that lacks
        # it: what counts is the user's.)
        user_omp = os.environ.get('OMP_NUM_THREADS', '')
        super().setup_env(env_cfg)
        self.cpu_plan: CpuPlan = machine_cpu_plan()
        threads = resolve_torch_threads(value, self.cpu_plan,
                                        omp_num_threads=user_omp)
        if threads is not None:
            torch.set_num_threads(threads)
        if threads is None and value is not None:
            self._threads_origin = 'OMP_NUM_THREADS in the environment'
        else:
            self._threads_origin = f'env_cfg.torch_threads={value!r}'

    def build_logger(self,
                     log_level: Union[int, str] = 'INFO',
                     log_file: Optional[str] = None,
                     **kwargs) -> MMLogger:
        """MMEngine's logger, its console handler filtered
        (:class:`~tip_adapter_mm.quiet.ConsoleFilter`: no set-up dumps
        unless ``show_config`` or DEBUG); logs the CPU plan once."""
        logger = super().build_logger(log_level, log_file, **kwargs)
        level = (log_level if isinstance(log_level, int) else
                 logging.getLevelName(str(log_level).upper()))
        debug = isinstance(level, int) and level <= logging.DEBUG
        filter_console(
            logger,
            show_setup=bool(self.cfg.get('show_config', False)) or debug)
        logger.info(f'CPU plan: {self.cpu_plan.describe()}. Torch uses '
                    f'{torch.get_num_threads()} thread(s) '
                    f'({self._threads_origin}).')
        return logger

    @staticmethod
    def build_dataloader(dataloader: Union[DataLoader, dict],
                         seed: Optional[int] = None,
                         diff_rank_seed: bool = False) -> DataLoader:
        """MMEngine's ``build_dataloader``, ``num_workers='auto'`` first
        resolved for this machine (:func:`auto_loader_cfg`)."""
        if isinstance(dataloader, dict):
            dataloader = auto_loader_cfg(dataloader)
        return Runner.build_dataloader(dataloader, seed, diff_rank_seed)

    def wrap_model(self, model_wrapper_cfg: Optional[dict],
                   model: nn.Module) -> nn.Module:
        if self._trains and hasattr(model, 'head'):
            self.model = model.to(get_device())
            self.few_shot.build_cache(self)
            # (A head that trains inside the image tower validates on
            # images: its features change while it trains.)
            if (self.few_shot.selects and self.cfg.get('val_dataloader')
                    and self.cfg.get('val_cfg')
                    and not model.head.uses_image_tower):
                self.few_shot.split_features(self, 'val')
        return super().wrap_model(model_wrapper_cfg, model)

    def val(self) -> dict:
        self._init_weights_once()
        return super().val()

    def test(self) -> dict:
        self._init_weights_once()
        return super().test()

    def _init_weights_once(self) -> None:
        model = unwrap(self.model)
        if hasattr(model, 'init_weights'):
            model.init_weights()

    def load_checkpoint(self,
                        filename: str,
                        map_location: Union[str, Callable] = 'cpu',
                        strict: bool = False,
                        revise_keys: List[Tuple[str, str]] = [('^module.',
                                                               '')]
                        ) -> dict:
        """MMEngine's ``load_checkpoint``; errors name the file.

        Raises:
            CheckpointFileError: the file is missing or unreadable, its
                pickled objects are refused by the safe load, loading it
                failed, or none of its keys is a key of this model.
        """
        model = unwrap(self.model)
        expected = {k: v.shape for k, v in model.state_dict().items()}
        reader = (f'this {type(model).__name__} (load_from / CHECKPOINT / '
                  '--resume)')
        if '://' not in str(filename) and not osp.isfile(
                osp.expanduser(str(filename))):
            raise CheckpointFileError(
                filename, reader,
                f'the file does not exist; expected {RUN_CHECKPOINT}.'
            ) from FileNotFoundError(filename)
        try:
            checkpoint = super().load_checkpoint(
                filename, map_location=map_location, strict=strict,
                revise_keys=revise_keys)
        except Exception as err:
            raise CheckpointFileError(
                filename, reader,
                load_failure_reason(str(filename), err, expected,
                                    RUN_CHECKPOINT)) from err
        state = checkpoint.get('state_dict', checkpoint) if isinstance(
            checkpoint, dict) else {}
        keys = set()
        for key in state:
            for pattern, replacement in revise_keys:
                key = re.sub(pattern, replacement, key)
            keys.add(key)
        if expected and not keys & set(expected):
            raise CheckpointFileError(
                filename, reader,
                load_failure_reason(
                    str(filename),
                    ValueError('no key of the checkpoint is a key of the '
                               'model'), expected, RUN_CHECKPOINT))
        return checkpoint

    def resume(self,
               filename: str,
               resume_optimizer: bool = True,
               resume_param_scheduler: bool = True,
               map_location: Union[str, Callable] = 'default') -> None:
        """MMEngine's ``resume``; a file that is not a checkpoint of a
        training run (no ``meta`` with the epoch) is named in the error."""
        try:
            super().resume(filename, resume_optimizer,
                           resume_param_scheduler, map_location)
        except CheckpointFileError:
            raise
        except KeyError as err:
            if not err.args or err.args[0] not in ('meta', 'epoch', 'iter'):
                raise
            raise CheckpointFileError(
                filename, 'the training run to resume (--resume)',
                f'it has no {err} entry: it is not a checkpoint that '
                'tools/train.py wrote while training (e.g. a pretrained '
                'state dict, or adapted_model.pth of a training-free run); '
                'expected work_dirs/<config>/epoch_N.pth.') from err
