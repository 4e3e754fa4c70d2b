# Zero-shot CLIP RN50 (ZeroShotHead, ImageNet's 7 prompt templates) on
# ImageNet-R (ranked among its 200 classes).
# The ImageNet few-shot loader only names the classes.
# Only the head differs from the Tip-Adapter config:
_base_ = ['./tip_imagenet_16shot_to_imagenet_r.py']
model = dict(
    head=dict(
        _delete_=True,
        type='ZeroShotHead',
        num_classes={{_base_.num_classes}},
        topk=(1, 5)))
