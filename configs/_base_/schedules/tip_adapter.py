# Training-free: fit the head on the few-shot views, search its
# hyperparameters on the validation split, evaluate. Nothing is trained.
runner_type = 'FewShotRunner'  # owns the stored features, fits the head

# What the head is fitted on, and where encoded features are stored. Every
# method, shot count and seed that asks for the same features reads them
# from this folder (a sweep shares one).
few_shot_cfg = dict(
    augment_epoch=10,  # augmented views of each few-shot image
    feature_dir=None,  # default <work_dir>/feature_cache
    seed=None,  # of the augmentations; default the few-shot dataset's seed
)

# Validation and test run on the stored features of their split: each image
# is encoded once.
val_cfg = dict(type='StoredFeaturesValLoop')
test_cfg = dict(type='StoredFeaturesTestLoop')

custom_hooks = [
    dict(type='BuildCacheHook'),
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
