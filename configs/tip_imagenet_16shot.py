# Tip-Adapter (training-free), CLIP RN50, ImageNet, 16 shots, seed 1.
# Paper (searched on test): 62.03 top-1. Here the search uses a held-out
# split of train (configs/_base_/datasets/imagenet_fewshot.py).
_base_ = [
    './_base_/models/tip_adapter_rn50.py',
    './_base_/datasets/imagenet_fewshot.py',
    './_base_/schedules/tip_adapter.py',
    './_base_/default_runtime.py',
]
model = dict(templates={{_base_.templates}}, head={{_base_.tip_head}})
