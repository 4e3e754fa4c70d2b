# Training-free Tip-Adapter: build the cache, search (beta, alpha) on the
# validation split, evaluate. Nothing is trained.
runner_type = 'FewShotRunner'  # loads init_cfg weights before encoding
val_cfg = dict()
test_cfg = dict()

custom_hooks = [
    # Keys: `augment_epoch` augmented passes over the few-shot set.
    dict(type='BuildCacheHook', augment_epoch=10),
    # split='test' reproduces the reference code's search on test images
    # (not a valid protocol; it logs a warning).
    dict(type='HyperparameterSearchHook', split='val'),
]

# Nothing has a gradient, so DDP has nothing to synchronise: this wrapper
# only DDP-wraps submodules with trainable parameters.
model_wrapper_cfg = dict(
    type='MMSeparateDistributedDataParallel',
    broadcast_buffers=False,
    find_unused_parameters=False)
