# ProLIP's recipe (arXiv 2410.05270; official code astra-vision/ProLIP,
# methods/ProLIP.py and configs/experiments/few_shot_no_val_lr1e-5_lambda_1_
# N.yaml): the stored pre-projection features of 300 augmented views of
# each few-shot image; 300 epochs, each on ONE view of every image, in one
# full batch; Adam (lr 1e-5, eps 1e-4, no weight decay), cosine schedule to
# 0 over the epochs; lambda = 1 / shots; the last epoch is the result
# (validation-free). See docs for the few-shot-validation setting.
_base_ = ['./tip_adapter_f.py']

# The stored views take 300 x images x 2048 x 4 bytes for RN50 (16 shots:
# ImageNet 39 GB, SUN397 16 GB, in memory while training); a smaller
# augment_epoch cycles through fewer views (a departure from the recipe).
few_shot_cfg = dict(
    augment_epoch=300,  # official aug_views: one new view per epoch
    # The paper's validation-free setting: nothing is selected on held-out
    # data, the head's validation-free lambda (1 / shots) and the last
    # epoch are the result.
    protocol='none',
)

train_dataloader = dict(
    # epoch e visits view (e % augment_epoch) of every image; the official
    # code keeps the stored order (one full batch, so order is moot)
    sampler=dict(type='ViewCyclingSampler', shuffle=False))

train_cfg = dict(
    type='FewShotTrainLoop',
    max_epochs=300,
    val_interval=1,  # only with a protocol that selects (not 'none')
    global_batch_size='all',  # full batch: one iteration per epoch
)

optim_wrapper = dict(
    constructor='TrainableParamsOptimWrapperConstructor',
    optimizer=dict(_delete_=True, type='Adam', lr=1e-5, eps=1e-4))
# Cosine to 0 over train_cfg.max_epochs, one step per epoch (= iteration),
# as the official torch CosineAnnealingLR(optimizer, train_epoch).
param_scheduler = dict(
    type='CosineAnnealingLR', eta_min=0.0, by_epoch=True, begin=0,
    convert_to_iter_based=True)

# Only the projection trains; DDP synchronises just it.
model_wrapper_cfg = dict(
    _delete_=True,
    type='MMDistributedDataParallel',
    broadcast_buffers=False,
    find_unused_parameters=False)
