"""A Runner that owns the run's stored features and fits the head first."""
import inspect
import os.path as osp
import re
from typing import Callable, List, Optional, Tuple, Union

import torch.nn as nn
from mmengine.device import get_device
from mmengine.runner import Runner

from mmpretrain.registry import RUNNERS
from ...models.utils.weight_files import (CheckpointFileError,
                                          load_failure_reason)
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

    Select it with ``runner_type = 'FewShotRunner'`` in the config.
    """

    def __init__(self, *args, **kwargs) -> None:
        bound = inspect.signature(Runner.__init__).bind(self, *args, **kwargs)
        cfg = bound.arguments.get('cfg') or {}
        self.few_shot = FewShotBuilder(**dict(cfg.get('few_shot_cfg') or {}))
        self.few_shot.check_config(cfg)
        self._trains = bound.arguments.get('train_cfg') is not None
        super().__init__(*args, **kwargs)

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
        reader = f'this {type(model).__name__} (load_from / CHECKPOINT)'
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
