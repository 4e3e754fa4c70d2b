# VPT, CLIP ViT-B/16, ImageNet, 16 shots, seed 1; recipe in
# configs/_base_/schedules/vpt.py.
_base_ = [
    './_base_/models/vpt_vit_b16.py',
    './_base_/datasets/imagenet_fewshot.py',
    './_base_/schedules/vpt.py',
    './_base_/default_runtime.py',
]
model = dict(
    templates={{_base_.templates}},
    head=dict(num_classes={{_base_.num_classes}}))
