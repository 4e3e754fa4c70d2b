# Tip-Adapter-F: fine-tune the cache keys (docs/method.md).
_base_ = ['./tip_adapter.py']

# Fast path: the features of the `augment_epoch` views the cache was built
# from; each epoch visits every image once, in view (epoch % augment_epoch).
# FewShotTrainLoop fills in `views_file`.
train_dataloader = dict(
    batch_size=256,  # per process; train_cfg.global_batch_size sets it
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='ViewCyclingSampler', shuffle=True),
    dataset=dict(type='CachedViewsDataset'))

train_cfg = dict(
    type='FewShotTrainLoop',
    max_epochs=20,
    val_interval=1,
    global_batch_size=256,  # summed over processes: N GPUs load 256 // N
)

optim_wrapper = dict(
    constructor='TrainableParamsOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-3, eps=1e-4, weight_decay=0.01))
# Cosine over all iterations of train_cfg.max_epochs, stepped every
# iteration (the end defaults to max_epochs).
param_scheduler = dict(
    type='CosineAnnealingLR', eta_min=0.0, by_epoch=True, begin=0,
    convert_to_iter_based=True)

# Head hyperparameters the search leaves at the config's values; the
# head values given in --cfg-options (model.head.alpha=0) are added
# (HyperparameterSearchHook, docs/protocol.md).
keep_hyperparameters = []

custom_hooks = [
    dict(type='BuildCacheHook'),
    # After training: load the best epoch on validation, search (beta,
    # alpha) on val with the fine-tuned keys, save
    # <work_dir>/final_searched.pth.
    dict(type='HyperparameterSearchHook'),
    # --resume after a kill: validate the resumed epoch (see the hook).
    dict(type='ValidateAfterResumeHook'),
]

# Only the keys have gradients: DDP synchronises just them.
model_wrapper_cfg = dict(
    _delete_=True,
    type='MMDistributedDataParallel',
    broadcast_buffers=False,
    find_unused_parameters=False)
