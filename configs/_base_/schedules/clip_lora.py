# CLIP-LoRA (docs/method.md): train the LoRA factors of CLIPLoRAHead inside
# both towers on the few-shot images, re-encoded (and freshly augmented)
# at every step. Sources: MaxZanella/CLIP-LoRA run_utils.py (defaults),
# lora.py (run_lora) and main.py:
#   AdamW, lr 2e-4, betas (0.9, 0.999), weight decay 1e-2; batch 32;
#   500 x K iterations (n_iters 500 times the shots); cosine over all
#   iterations down to 1e-6, stepped every iteration; fp16 autocast with a
#   gradient scaler (tools/train.py --amp); nothing is validated while
#   training (VALIDATION = False) and the last iteration is evaluated;
#   random resized crop (scale 0.08-1, bicubic) and horizontal flip.
# FewShotTrainLoop counts epochs over the N x K few-shot images (32 a
# step, the last step of an epoch smaller, as their drop_last=False
# loader): each experiment config sets
#   max_epochs = ceil(500 K / ceil(N K / 32)),
# at most one epoch more than their 500 K steps (their loop stops inside
# an epoch). For K = 16 this is ceil(8000 / ceil(N / 2)); it stays about
# 16000 / N for every K, so a sweep over shots can keep it.
_base_ = ['./tip_adapter_f.py']

# Nothing is selected on validation: fixed settings, the last epoch. No
# views are encoded for the head (it encodes the images itself).
few_shot_cfg = dict(protocol='none', augment_epoch=1)

# The train pipeline of the experiment configs' fewshot_dataloader (their
# transform; the other heads' views keep Tip-Adapter's 0.5-1 crops).
clip_lora_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='RandomResizedCrop',
        scale=224,
        crop_ratio_range=(0.08, 1.0),
        interpolation='bicubic',
        backend='pillow'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]

# The few-shot images themselves (fewshot_dataloader.dataset: the same
# shots and pipeline), shuffled every epoch.
train_dataloader = dict(
    batch_size=32,  # per process; train_cfg.global_batch_size sets it
    num_workers='auto',  # the source's 8; 'auto': chosen from the machine
    persistent_workers=True,
    sampler=dict(_delete_=True, type='DefaultSampler', shuffle=True),
    dataset=dict(_delete_=True, type='FewShotDataset'))

# ImageNet's count (N = 1000: 500 steps an epoch, 16 epochs); every
# experiment config sets its dataset's.
train_cfg = dict(max_epochs=16, global_batch_size=32)

# Validation and test encode the images through the adapted tower.
val_cfg = dict(_delete_=True, type='ValLoop')
test_cfg = dict(_delete_=True, type='TestLoop')

optim_wrapper = dict(
    optimizer=dict(
        _delete_=True,
        type='AdamW',
        lr=2e-4,
        betas=(0.9, 0.999),
        weight_decay=1e-2))
# Cosine over all iterations of train_cfg.max_epochs, stepped every
# iteration, to their eta_min 1e-6.
param_scheduler = dict(eta_min=1e-6)
