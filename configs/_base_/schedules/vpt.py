# VPT (docs/method.md): train the prompt tokens of VPTHead inside the frozen
# image tower on the few-shot images (encoded at every step). Sources: the
# VPT baseline of github.com/muzairkhattak/multimodal-prompt-learning,
# configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml, and Dassl.pytorch's
# defaults:
#   SGD, lr 0.0025, momentum 0.9, weight decay 5e-4; batch 4; 5 epochs;
#   one warm-up epoch at a constant lr of 1e-5, then cosine stepped per
#   epoch; the model of the last epoch is evaluated (nothing is selected on
#   validation); every epoch sees each few-shot image once, freshly
#   augmented (the dataset base's train pipeline). Their PREC is fp16:
#   tools/train.py --amp on a GPU.
# Everything not set here is CoOp's schedule (configs/_base_/schedules/
# coop.py: protocol 'none', hooks, the DDP wrapper).
_base_ = ['./coop.py']

# The few-shot images themselves (fewshot_dataloader's set and train
# pipeline), shuffled; FewShotTrainLoop fills the dataset in.
train_dataloader = dict(
    _delete_=True,
    batch_size=4,  # per process; train_cfg.global_batch_size sets it
    num_workers='auto',  # the yaml's DATALOADER.NUM_WORKERS is 8
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='FewShotDataset'))

train_cfg = dict(max_epochs=5, global_batch_size=4)

# The image features change while training: validation and test encode the
# images (MMEngine's loops; the stored-feature loops refuse these heads).
val_cfg = dict(_delete_=True, type='ValLoop')
test_cfg = dict(_delete_=True, type='TestLoop')

# No views are encoded for this head (its fit only starts the prompts).
few_shot_cfg = dict(augment_epoch=1)

optim_wrapper = dict(
    optimizer=dict(
        _delete_=True, type='SGD', lr=0.0025, momentum=0.9,
        weight_decay=5e-4))
# Epoch 0 at 1e-5, then cosine from epoch 1 to train_cfg.max_epochs (T_max
# = 4 epochs where Dassl's has 5: epochs 2-4 at 0.85, 0.50, 0.15 of lr
# where Dassl's are at 0.90, 0.65, 0.35; it follows max_epochs when that
# changes).
param_scheduler = [
    dict(type='ConstantLR', factor=1e-5 / 0.0025, by_epoch=True, begin=0,
         end=2),
    dict(type='CosineAnnealingLR', eta_min=0.0, by_epoch=True, begin=1),
]
