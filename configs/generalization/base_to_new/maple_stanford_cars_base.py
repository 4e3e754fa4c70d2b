# MaPLe, CLIP ViT-B/16, Stanford Cars base-to-new, base classes: 16 shots of
# the first ceil(196 / 2) = 98 classes, tested on their test images; recipe in
# configs/_base_/schedules/maple.py. As configs/maple_stanford_cars_16shot.py
# on the base classes. The new classes: maple_stanford_cars_new.py with this
# run's checkpoint.
_base_ = [
    '../../_base_/models/maple_vit_b16.py',
    '../../_base_/datasets/stanford_cars_base_to_new.py',
    '../../_base_/schedules/maple.py',
    '../../_base_/default_runtime.py',
]
model = dict(
    templates={{_base_.templates}},
    head=dict(num_classes={{_base_.base_classes}}))
