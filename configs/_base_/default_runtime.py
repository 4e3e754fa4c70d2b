# MMPretrain's runtime (hooks, logging, visualizer), plus this plugin.
_base_ = 'mmpretrain::_base_/default_runtime.py'

custom_imports = dict(imports=['tip_adapter_mm'], allow_failed_imports=False)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    # Training (Tip-Adapter-F) keeps the epoch with the best top-1 on the
    # VALIDATION split, and the last two epochs for --resume.
    checkpoint=dict(
        type='CheckpointHook',
        interval=1,
        max_keep_ckpts=2,
        save_best='accuracy/top1',
        rule='greater'))

# Seeds the runner; the few-shot draw and the augmentations of the cache
# use `fewshot_dataloader.dataset.seed` (see configs/_base_/datasets/).
randomness = dict(seed=1, deterministic=False)
