# TaskRes (docs/method.md): train the task residual of TaskResHead on the
# stored support views, as the official code trains it. Sources:
# geekyutao/TaskRes configs/trainers/TaskRes/adam_lr2e-3_B256_ep200.yaml
# (16 shots; ImageNet: adam_lr2e-4_B256_ep200.yaml, see
# configs/taskres_imagenet_16shot.py), train_regular.sh (residual scale 0.5,
# Flowers102 1.0) and Dassl.pytorch's defaults (dassl/config/defaults.py,
# dassl/optim):
#   Adam, lr 2e-3, betas (0.9, 0.999), weight decay 5e-4; batch 256;
#   200 epochs; one warm-up epoch at a constant lr of 1e-5, then cosine
#   stepped per epoch; the last epoch is the result (TEST.FINAL_MODEL
#   'last_step'); every epoch sees each few-shot image once, freshly
#   augmented.
_base_ = ['./tip_adapter_f.py']

# The official recipe selects nothing on validation: fixed settings, last
# epoch, no validation while training.
few_shot_cfg = dict(protocol='none')

# One stored view of each image per epoch (view epoch % augment_epoch).
train_dataloader = dict(sampler=dict(type='ViewCyclingSampler', shuffle=True))

train_cfg = dict(max_epochs=200, global_batch_size=256)

optim_wrapper = dict(
    optimizer=dict(
        _delete_=True, type='Adam', lr=2e-3, betas=(0.9, 0.999),
        weight_decay=5e-4))
# Epoch 0 at 1e-5 (ConstantLR's factor is relative to the lr; it is
# restored at epoch 1), then cosine from epoch 1 to train_cfg.max_epochs,
# stepped once per epoch as Dassl does.
param_scheduler = [
    dict(type='ConstantLR', factor=1e-5 / 2e-3, by_epoch=True, begin=0,
         end=2),
    dict(type='CosineAnnealingLR', eta_min=0.0, by_epoch=True, begin=1),
]

# Under protocol 'none' the search hook applies the validation-free values
# after training and saves final_searched.pth (the last epoch); under a
# validation protocol it loads the best epoch on validation first.
# Head hyperparameters the search leaves at the config's values; the
# head values given in --cfg-options (model.head.alpha=0) are added
# (HyperparameterSearchHook, docs/protocol.md).
keep_hyperparameters = []

custom_hooks = [
    dict(type='BuildCacheHook'),
    dict(type='HyperparameterSearchHook'),
    dict(type='ValidateAfterResumeHook'),
]
