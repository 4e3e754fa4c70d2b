# Tip-Adapter-F with two caches, ImageNet, 16 shots, seed 1, 20 epochs: both
# key sets (CLIP RN50's and the self-supervised MMPretrain ResNet-50's) are
# fine-tuned at the initial alpha, beta, alpha2, beta2; then the staged
# search as in tip_imagenet_16shot_dual_cache_resnet50.py.
_base_ = [
    './_base_/models/tip_adapter_rn50.py',
    './_base_/datasets/imagenet_fewshot.py',
    './_base_/schedules/tip_adapter_f.py',
    './_base_/default_runtime.py',
]

second_checkpoint = (
    'https://download.openmmlab.com/mmselfsup/1.x/mocov2/'
    'mocov2_resnet50_8xb32-coslr-200e_in1k/'
    'mocov2_resnet50_8xb32-coslr-200e_in1k_20220825-b6d23c86.pth')

model = dict(
    templates={{_base_.templates}},  # the 7 ImageNet templates
    second_backbone=dict(
        type='ResNet',
        depth=50,
        init_cfg=dict(
            type='Pretrained', checkpoint=second_checkpoint,
            prefix='backbone.')),
    second_neck=dict(type='GlobalAveragePooling'),
    second_mean=[123.675, 116.28, 103.53],
    second_std=[58.395, 57.12, 57.375],
    head=dict(
        type='DualCacheTipAdapterHead',
        num_classes={{_base_.num_classes}},
        train_cache_keys=True,  # Tip-Adapter-F: both key sets
        alpha={{_base_.init_alpha}},  # 1.17; the loss uses it
        beta=1.0,
        search_scale={{_base_.search_scale}},  # (beta, alpha): (7, 3)
        search_step=(200, 20),
        alpha2=1.0,  # the loss uses it
        beta2=1.0,
        second_search_scale=(7, 3),
        second_search_step=(200, 20),
        search_mode='staged'))

fewshot_dataloader = dict(dataset=dict(num_shots=16, seed=1))
train_cfg = dict(max_epochs={{_base_.f_epochs}})
param_scheduler = dict(
    T_max={{_base_.f_epochs}}, end={{_base_.f_epochs}})
