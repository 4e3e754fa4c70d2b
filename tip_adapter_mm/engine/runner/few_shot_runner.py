"""A Runner that owns the run's stored features and fits the head first."""
import inspect
from typing import Optional

import torch.nn as nn
from mmengine.device import get_device
from mmengine.runner import Runner

from mmpretrain.registry import RUNNERS
from ..few_shot_builder import FewShotBuilder, unwrap


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
