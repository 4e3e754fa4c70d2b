# CoOp (docs/method.md): train the context vectors of CoOpHead on the
# stored support views (the image tower is frozen, so no image is encoded
# while training). Sources: KaiyangZhou/CoOp configs/trainers/CoOp/rn50.yaml
# (ImageNet: rn50_ep50.yaml, see configs/coop_imagenet_16shot.py),
# scripts/coop/main.sh (16 shots) and Dassl.pytorch's defaults:
#   SGD, lr 0.002, momentum 0.9, weight decay 5e-4; batch 32; 200 epochs;
#   one warm-up epoch at a constant lr of 1e-5, then cosine stepped per
#   epoch; the model of the last epoch is evaluated (nothing is selected on
#   validation); every epoch sees each few-shot image once, freshly
#   augmented (random resized crop and flip).
_base_ = ['./tip_adapter_f.py']

# Nothing is selected on validation: fixed settings, last epoch, no
# validation while training.
few_shot_cfg = dict(protocol='none')

# One stored view of each image per epoch (view epoch % augment_epoch).
train_dataloader = dict(sampler=dict(type='ViewCyclingSampler', shuffle=True))

train_cfg = dict(max_epochs=200, global_batch_size=32)

optim_wrapper = dict(
    optimizer=dict(
        _delete_=True, type='SGD', lr=0.002, momentum=0.9,
        weight_decay=5e-4))
# Epoch 0 at 1e-5 (ConstantLR's factor is relative to the lr; it is
# restored at epoch 1), then cosine from epoch 1 to train_cfg.max_epochs,
# stepped once per epoch.
param_scheduler = [
    dict(type='ConstantLR', factor=1e-5 / 0.002, by_epoch=True, begin=0,
         end=2),
    dict(type='CosineAnnealingLR', eta_min=0.0, by_epoch=True, begin=1),
]

# Under protocol 'none' the search hook applies the validation-free values
# (CoOp has none) after training and saves final_searched.pth (the last
# epoch).
# Head hyperparameters the search leaves at the config's values; the
# head values given in --cfg-options (model.head.alpha=0) are added
# (HyperparameterSearchHook, docs/protocol.md).
keep_hyperparameters = []

custom_hooks = [
    dict(type='BuildCacheHook'),
    dict(type='HyperparameterSearchHook'),
    dict(type='ValidateAfterResumeHook'),
]
