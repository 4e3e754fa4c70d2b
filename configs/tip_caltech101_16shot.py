# Tip-Adapter (training-free), CLIP RN50, Caltech101, 16 shots, seed 1.
_base_ = [
    './_base_/models/tip_adapter_rn50.py',
    './_base_/datasets/caltech101_fewshot.py',
    './_base_/schedules/tip_adapter.py',
    './_base_/default_runtime.py',
]
model = dict(templates={{_base_.templates}}, head={{_base_.tip_head}})
