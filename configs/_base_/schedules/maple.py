# MaPLe (docs/method.md): train the coupled prompts of MaPLeHead inside the
# frozen towers on the few-shot images (encoded at every step; one text
# pass over the N classes per step). Sources: github.com/muzairkhattak/
# multimodal-prompt-learning, configs/trainers/MaPLe/
# vit_b16_c2_ep5_batch4_2ctx.yaml, and Dassl.pytorch's defaults:
#   SGD, lr 0.0035, momentum 0.9, weight decay 5e-4; batch 4; 5 epochs;
#   one warm-up epoch at a constant lr of 1e-5, then cosine stepped per
#   epoch; the model of the last epoch is evaluated (nothing is selected on
#   validation); every epoch sees each few-shot image once, freshly
#   augmented (the dataset base's train pipeline). Their PREC is fp16:
#   tools/train.py --amp on a GPU.
# Everything else is VPT's schedule (configs/_base_/schedules/vpt.py: the
# image train loader, batch 4, 5 epochs, the image val/test loops), which
# this one extends.
_base_ = ['./vpt.py']

optim_wrapper = dict(
    optimizer=dict(
        _delete_=True, type='SGD', lr=0.0035, momentum=0.9,
        weight_decay=5e-4))
# Epoch 0 at 1e-5, then cosine from epoch 1 to train_cfg.max_epochs (as
# VPT's schedule: T_max 4 epochs where Dassl's has 5).
param_scheduler = [
    dict(type='ConstantLR', factor=1e-5 / 0.0035, by_epoch=True, begin=0,
         end=2),
    dict(type='CosineAnnealingLR', eta_min=0.0, by_epoch=True, begin=1),
]
