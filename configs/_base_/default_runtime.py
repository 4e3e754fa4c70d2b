# MMPretrain's runtime (hooks, logging, visualizer), plus this plugin.
_base_ = 'mmpretrain::_base_/default_runtime.py'

custom_imports = dict(imports=['tip_adapter_mm'], allow_failed_imports=False)

default_hooks = dict(logger=dict(type='LoggerHook', interval=10))

# Seeds the runner; the few-shot draw and the augmentations of the cache
# use `fewshot_dataloader.dataset.seed` (see configs/_base_/datasets/).
randomness = dict(seed=1, deterministic=False)
