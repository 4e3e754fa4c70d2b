# ProLIP, CLIP RN50, Flowers102 base-to-new, base classes: 16 shots of the
# first ceil(102 / 2) = 51 classes, tested on their test images; validation-
# free recipe in configs/_base_/schedules/prolip.py. As
# configs/prolip_flowers102_16shot.py on the base classes. The new classes:
# prolip_flowers102_new.py with this run's checkpoint.
_base_ = [
    '../../_base_/models/prolip_rn50.py',
    '../../_base_/datasets/flowers102_base_to_new.py',
    '../../_base_/schedules/prolip.py',
    '../../_base_/default_runtime.py',
]
model = dict(
    templates={{_base_.templates}},
    head=dict(num_classes={{_base_.base_classes}}))
default_hooks = dict(checkpoint=dict(interval=50))  # 300 short epochs
