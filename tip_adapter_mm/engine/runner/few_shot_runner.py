"""A Runner that builds the cache model before wrapping it for DDP."""
import copy
from typing import Optional

import torch.nn as nn
from mmengine.device import get_device
from mmengine.dist import barrier, get_world_size
from mmengine.runner import Runner

from mmpretrain.registry import HOOKS, RUNNERS
from ..hooks import BuildCacheHook


@RUNNERS.register_module()
class FewShotRunner(Runner):
    """MMEngine's Runner, with two additions for cache models.

    1. When training is configured, the cache (and the zero-shot weights) is
       built *before* the model is wrapped for DDP and before the optimizer
       exists, so Tip-Adapter-F's learnable keys have their final shape when
       DDP and the optimizer register them. It is built by the
       ``BuildCacheHook`` of ``custom_hooks``, with its arguments, and a
       ``CachedViewsDataset`` train set without ``views_file`` is pointed at
       the views that hook encoded (the fast path: no encoder work while
       fine-tuning).
    2. ``global_batch_size`` (a top-level config key, optional) is the batch
       summed over all processes; each process loads
       ``global_batch_size // world_size``, so 1 and 8 GPUs run the same
       recipe. Without it, ``train_dataloader.batch_size`` is per process,
       as in MMEngine.

    3. Pretrained weights given through ``init_cfg`` (MMPretrain
       backbones) are loaded before anything is encoded: before the cache
       is built, and at the start of ``val()``/``test()`` when no
       checkpoint is loaded (training-free evaluation), where MMEngine's
       Runner would not initialise the model at all.

    Select it with ``runner_type = 'FewShotRunner'`` in the config.
    """

    @classmethod
    def from_cfg(cls, cfg) -> 'FewShotRunner':
        runner = super().from_cfg(cfg)
        runner.apply_global_batch_size(cfg.get('global_batch_size'))
        return runner

    def apply_global_batch_size(self, global_batch_size: Optional[int]):
        if global_batch_size is None or not isinstance(
                self._train_dataloader, dict):
            return
        world_size = get_world_size()
        if global_batch_size % world_size:
            raise ValueError(
                f'global_batch_size={global_batch_size} is not divisible by '
                f'the {world_size} processes.')
        self._train_dataloader['batch_size'] = global_batch_size // world_size
        self.logger.info(
            f'global_batch_size {global_batch_size}: '
            f'{global_batch_size // world_size} per process x {world_size}.')

    def wrap_model(self, model_wrapper_cfg: Optional[dict],
                   model: nn.Module) -> nn.Module:
        if isinstance(self._train_loop, dict) and hasattr(model, 'head'):
            model = model.to(get_device())
            self.model = model  # what _init_model_weights initialises
            self._init_model_weights()
            self.prepare_cache_model(model)
        return super().wrap_model(model_wrapper_cfg, model)

    def _init_model_weights(self) -> None:
        """MMEngine's initialisation (``init_weights``, then a broadcast of
        rank 0's weights), once: a model already initialised is left as
        it is."""
        model = getattr(self.model, 'module', self.model)
        if not getattr(model, 'is_init', False):
            super()._init_model_weights()

    def val(self) -> dict:
        if not self._load_from:
            self._init_model_weights()
        return super().val()

    def test(self) -> dict:
        if not self._load_from:
            self._init_model_weights()
        return super().test()

    def prepare_cache_model(self, model: nn.Module) -> None:
        hook_cfgs = [
            h for h in (self.cfg.get('custom_hooks') or [])
            if h.get('type') in ('BuildCacheHook', BuildCacheHook)
        ]
        if not hook_cfgs:
            return
        hook = HOOKS.build(copy.deepcopy(hook_cfgs[0]))
        hook.build(self, model)
        barrier()  # rank 0 has written the encoded views
        dataset = self._train_dataloader.get('dataset')
        self.check_train_set(dataset)
        if isinstance(dataset, dict) and dataset.get('type') in (
                'CachedViewsDataset', ) and dataset.get('views_file') is None:
            dataset['views_file'] = hook.views_path
            dataset['num_views'] = hook.augment_epoch
            dataset['classes'] = list(hook.class_names or ())

    def check_train_set(self, dataset) -> None:
        """A re-encoding train set must be the few-shot set of the cache."""
        fewshot = (self.cfg.get('fewshot_dataloader') or {}).get('dataset')
        if not (isinstance(dataset, dict) and fewshot
                and dataset.get('type') == fewshot.get('type')):
            return
        differ = [
            k for k in ('num_shots', 'seed', 'holdout')
            if dataset.get(k) != fewshot.get(k)
        ]
        if differ:
            raise ValueError(
                'train_dataloader.dataset and fewshot_dataloader.dataset '
                f'differ in {differ}: '
                + ', '.join(f'{k}={dataset.get(k)!r} vs {fewshot.get(k)!r}'
                            for k in differ)
                + '. Set both (e.g. --cfg-options '
                'train_dataloader.dataset.num_shots=8 '
                'fewshot_dataloader.dataset.num_shots=8).')
