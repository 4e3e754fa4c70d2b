# Tip-Adapter-F, CLIP RN50, adapted on ImageNet 16 shots (best epoch
# and search on the held-out part of ImageNet train, seed 1), tested on
# ImageNet-Sketch.
_base_ = [
    '../_base_/models/tip_adapter_rn50.py',
    '../_base_/datasets/imagenet_sketch.py',
    '../_base_/schedules/tip_adapter_f.py',
    '../_base_/default_runtime.py',
]
model = dict(templates={{_base_.templates}}, head={{_base_.tip_f_head}})
train_cfg = dict(max_epochs={{_base_.f_epochs}})
