# Tip-Adapter-F: fine-tune the cache keys (SPEC section 1).
runner_type = 'FewShotRunner'  # builds the cache before DDP wrapping

# Summed over processes: each of N GPUs loads 256 // N.
global_batch_size = 256

# Fast path: the features of the `augment_epoch` views encoded for the cache;
# each epoch visits every image once, in view (epoch % augment_epoch).
# FewShotRunner fills in `views_file`.
train_dataloader = dict(
    batch_size=256,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='ViewCyclingSampler', shuffle=True),
    dataset=dict(type='CachedViewsDataset'))

train_cfg = dict(by_epoch=True, max_epochs=20, val_interval=1)
val_cfg = dict()
test_cfg = dict()

optim_wrapper = dict(
    constructor='TrainableParamsOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-3, eps=1e-4, weight_decay=0.01))
# Cosine over all iterations, stepped every iteration.
param_scheduler = dict(
    type='CosineAnnealingLR',
    T_max=20,
    eta_min=0.0,
    by_epoch=True,
    begin=0,
    end=20,
    convert_to_iter_based=True)

custom_hooks = [
    dict(type='BuildCacheHook', augment_epoch=10),
    # After training: load the best epoch, search (beta, alpha) on val with
    # the fine-tuned keys, save <work_dir>/final_searched.pth.
    dict(type='HyperparameterSearchHook', split='val'),
    # --resume after a kill: validate the resumed epoch (see the hook).
    dict(type='ValidateAfterResumeHook'),
]

# Only the keys have gradients: DDP synchronises just them.
model_wrapper_cfg = dict(
    type='MMDistributedDataParallel',
    broadcast_buffers=False,
    find_unused_parameters=False)
