# CLIP RN50 (open_clip) zero-shot + CLIP cache, plus a second cache keyed by
# a self-supervised MMPretrain ResNet-50 (MoCo v2, 200 epochs on ImageNet
# images without labels), as CaFo does with DINO.
_base_ = ['./tip_adapter_rn50.py']

# MMPretrain's MoCo v2 ResNet-50 checkpoint (backbone.* keys).
second_checkpoint = (
    'https://download.openmmlab.com/mmselfsup/1.x/mocov2/'
    'mocov2_resnet50_8xb32-coslr-200e_in1k/'
    'mocov2_resnet50_8xb32-coslr-200e_in1k_20220825-b6d23c86.pth')

model = dict(
    second_backbone=dict(
        type='ResNet',
        depth=50,
        init_cfg=dict(
            type='Pretrained', checkpoint=second_checkpoint,
            prefix='backbone.')),
    second_neck=dict(type='GlobalAveragePooling'),  # (B, 2048)
    # ImageNet's normalisation for the ResNet (the CLIP tower keeps CLIP's):
    # the images normalised for CLIP are re-normalised for it.
    second_mean=[123.675, 116.28, 103.53],
    second_std=[58.395, 57.12, 57.375],
    head=dict(
        type='DualCacheTipAdapterHead',
        alpha2=1.0,
        beta2=1.0,
        second_search_scale=(7, 3),  # (beta2, alpha2)
        second_search_step=(200, 20),  # alpha2 also takes 0
        # (beta, alpha) with the second cache off, then (beta2, alpha2)
        search_mode='staged'))
