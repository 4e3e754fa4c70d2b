# VPT, CLIP ViT-B/16, EuroSAT base-to-new, base classes: 16 shots of the first
# ceil(10 / 2) = 5 classes, tested on their test images; recipe in
# configs/_base_/schedules/vpt.py. As configs/vpt_eurosat_16shot.py on the base
# classes. The new classes: vpt_eurosat_new.py with this run's checkpoint.
_base_ = [
    '../../_base_/models/vpt_vit_b16.py',
    '../../_base_/datasets/eurosat_base_to_new.py',
    '../../_base_/schedules/vpt.py',
    '../../_base_/default_runtime.py',
]
model = dict(
    templates={{_base_.templates}},
    head=dict(num_classes={{_base_.base_classes}}))
