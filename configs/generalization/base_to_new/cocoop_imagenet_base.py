# CoCoOp, CLIP RN50, ImageNet base-to-new, base classes: 16 shots of the first
# ceil(1000 / 2) = 500 classes, tested on their test images; recipe in
# configs/_base_/schedules/cocoop.py (the one of CoCoOp's base-to-new scripts).
# As configs/cocoop_imagenet_16shot.py on the base classes. The new classes:
# cocoop_imagenet_new.py with this run's checkpoint.
_base_ = [
    '../../_base_/models/cocoop_rn50.py',
    '../../_base_/datasets/imagenet_base_to_new.py',
    '../../_base_/schedules/cocoop.py',
    '../../_base_/default_runtime.py',
]
# The head keeps zero-shot weights of 'a photo of a {}.' only (the
# method's ImageNet prompt).
model = dict(
    templates='default',
    head=dict(num_classes={{_base_.base_classes}}))
