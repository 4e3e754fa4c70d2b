# Tip-Adapter (training-free), CLIP RN50, adapted on ImageNet 16 shots
# (seed 1, search on the held-out part of ImageNet train), tested on
# ImageNet-V2 (matched frequency).
_base_ = [
    '../_base_/models/tip_adapter_rn50.py',
    '../_base_/datasets/imagenet_v2.py',
    '../_base_/schedules/tip_adapter.py',
    '../_base_/default_runtime.py',
]
model = dict(templates={{_base_.templates}}, head={{_base_.tip_head}})
