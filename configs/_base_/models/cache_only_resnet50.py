# The cache model alone (CacheOnlyHead, no zero-shot term, no text tower) on
# an MMPretrain backbone: here an ImageNet ResNet-50 from MMPretrain's model
# zoo. Any MMPretrain backbone works (ConvNeXt, ViT, EfficientNet...) as long
# as backbone + neck give one (B, C) vector per image.
model = dict(
    type='CLIPFewShotClassifier',
    backbone=dict(
        type='ResNet',
        depth=50,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://download.openmmlab.com/mmclassification/v0/'
            'resnet/resnet50_batch256_imagenet_20200708-cfb998bf.pth',
            prefix='backbone.')),
    neck=dict(type='GlobalAveragePooling'),  # (B, 2048) per image
    head=dict(
        type='CacheOnlyHead',
        num_classes=1000,
        alpha=1.0,  # scales the logits only; not searched
        beta=1.0,
        # beta grid: 200 points from 0.1 to a top fitted to the features'
        # spread (CacheOnlyHead); a number gives the linear grid [0.1, it).
        search_scale='auto',
        search_step=200,
        topk=(1, )),
    # The normalisation the backbone was trained with (ImageNet's).
    data_preprocessor=dict(
        type='FeatureOrImageDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        to_rgb=True))
