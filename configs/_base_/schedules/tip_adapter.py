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
    # What selects hyperparameters and the best epoch (docs/protocol.md):
    # 'val' (the whole val split), 'fewshot_val' (min(K, 4) per class of
    # it), 'kshot_val' (K per class), 'none' (each method's validation-free
    # values, last epoch). The test split is never used to choose, unless
    # 'reference_test' (the public reference code's protocol) is named.
    protocol='val',
    # What the encoders compute in (docs/precision.md): 'fp32', 'fp16' (on
    # a GPU, as the reference code) or 'bf16' (on the CPU). Features are
    # stored as float32 under entries of their own precision.
    precision='fp32',
    channels_last=False,  # conv towers (RN50) on GPUs; harmless on a ViT
)

# Validation and test run on the stored features of their split: each image
# is encoded once.
val_cfg = dict(type='StoredFeaturesValLoop')
test_cfg = dict(type='StoredFeaturesTestLoop')

# Head hyperparameters the search leaves at the config's values; the
# head values given in --cfg-options (model.head.alpha=0) are added
# (HyperparameterSearchHook, docs/protocol.md).
keep_hyperparameters = []

custom_hooks = [
    dict(type='BuildCacheHook'),
    # Searches on the split of few_shot_cfg.protocol.
    dict(type='HyperparameterSearchHook'),
]

# Nothing has a gradient, so DDP has nothing to synchronise: this wrapper
# only DDP-wraps submodules with trainable parameters.
model_wrapper_cfg = dict(
    type='MMSeparateDistributedDataParallel',
    broadcast_buffers=False,
    find_unused_parameters=False)
