# CLAP (docs/method.md): train the class prototypes of CLAPHead on the
# stored support views with its validation-free recipe, the same for every
# dataset. Sources: jusiro/CLAP configs/trainers/SGD_lr1e-1_B256_ep300.yaml,
# experiments/experiment_CLAP.txt (INIT ZS, CONSTRAINT l2), trainers/
# adapters.py and Dassl.pytorch's defaults (dassl/config/defaults.py,
# dassl/optim):
#   SGD, lr 0.1, momentum 0.9, no weight decay; batch 256; 300 epochs; one
#   warm-up epoch at a constant lr of 1e-5, then cosine stepped per epoch;
#   the last epoch is the result. An official epoch runs as many batches as
#   the few-shot set has (floor(S / 256), at least 1) drawn from all its
#   stored augmented views: here each image once, in one of its views.
_base_ = ['./tip_adapter_f.py']

# Validation-free: nothing is selected, the last epoch is the result.
few_shot_cfg = dict(protocol='none')

# One stored view of each image per epoch (view epoch % augment_epoch).
train_dataloader = dict(sampler=dict(type='ViewCyclingSampler', shuffle=True))

train_cfg = dict(max_epochs=300, global_batch_size=256)

optim_wrapper = dict(
    optimizer=dict(
        _delete_=True, type='SGD', lr=0.1, momentum=0.9, weight_decay=0.0))
# Epoch 0 at 1e-5 (ConstantLR's factor is relative to the lr; it is
# restored at epoch 1), then cosine from epoch 1 to train_cfg.max_epochs,
# stepped once per epoch as Dassl does.
param_scheduler = [
    dict(type='ConstantLR', factor=1e-5 / 0.1, by_epoch=True, begin=0,
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
