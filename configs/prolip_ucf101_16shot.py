# ProLIP (fine-tunes CLIP's last visual projection; validation-free recipe: lr
# 1e-5, lambda = 1/16, last of 300 epochs), CLIP RN50, UCF101, 16 shots, seed
# 1. See configs/_base_/schedules/prolip.py.
_base_ = [
    './_base_/models/prolip_rn50.py',
    './_base_/datasets/ucf101_fewshot.py',
    './_base_/schedules/prolip.py',
    './_base_/default_runtime.py',
]
model = dict(
    templates={{_base_.templates}},
    head=dict(num_classes={{_base_.num_classes}}))
default_hooks = dict(checkpoint=dict(interval=50))  # 300 short epochs
