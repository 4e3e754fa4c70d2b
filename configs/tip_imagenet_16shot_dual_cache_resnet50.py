# Tip-Adapter with two caches, ImageNet, 16 shots, seed 1: CLIP RN50
# zero-shot + the CLIP RN50 cache + a second cache keyed by a
# self-supervised MMPretrain ResNet-50 (MoCo v2: ImageNet images, no labels),
# as CaFo does with DINO. The search: Tip-Adapter's (beta, alpha) grid with
# the second cache off, then (beta2, alpha2) on top; alpha2 = 0 is in its
# grid, so the search can decline the second cache.
_base_ = [
    './_base_/models/tip_adapter_rn50.py',
    './_base_/datasets/imagenet_fewshot.py',
    './_base_/schedules/tip_adapter.py',
    './_base_/default_runtime.py',
]

# MMPretrain's MoCo v2 ResNet-50 (200 epochs), backbone.* keys.
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
    second_neck=dict(type='GlobalAveragePooling'),  # (B, 2048)
    # ImageNet's normalisation for the ResNet (the CLIP tower keeps CLIP's)
    second_mean=[123.675, 116.28, 103.53],
    second_std=[58.395, 57.12, 57.375],
    head=dict(
        type='DualCacheTipAdapterHead',
        num_classes={{_base_.num_classes}},
        alpha={{_base_.init_alpha}},  # 1.17 before the search
        beta=1.0,
        search_scale={{_base_.search_scale}},  # (beta, alpha): (7, 3)
        search_step=(200, 20),
        alpha2=1.0,
        beta2=1.0,
        second_search_scale=(7, 3),  # (beta2, alpha2)
        second_search_step=(200, 20),  # alpha2 also takes 0
        search_mode='staged'))

fewshot_dataloader = dict(dataset=dict(num_shots=16, seed=1))
