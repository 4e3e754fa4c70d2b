# CLIP-Adapter, CLIP RN50, ImageNet base-to-new, base classes: 16 shots of the
# first ceil(1000 / 2) = 500 classes, tested on their test images; recipe in
# configs/_base_/schedules/clip_adapter.py. As
# configs/clip_adapter_imagenet_16shot.py on the base classes. The new classes:
# clip_adapter_imagenet_new.py with this run's checkpoint.
_base_ = [
    '../../_base_/models/clip_adapter_rn50.py',
    '../../_base_/datasets/imagenet_base_to_new.py',
    '../../_base_/schedules/clip_adapter.py',
    '../../_base_/default_runtime.py',
]
# The head keeps zero-shot weights of 'a photo of a {}.' only (the
# method's ImageNet prompt).
model = dict(
    templates='default',
    head=dict(num_classes={{_base_.base_classes}}))
# CoOp's command trains ImageNet for 50 epochs.
train_cfg = dict(max_epochs=50)
