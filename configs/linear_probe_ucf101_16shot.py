# Linear probe (LinearProbeHead, C searched on validation), CLIP RN50's
# visual tower only, UCF101, 16 shots, seed 1.
_base_ = [
    './_base_/models/linear_probe_rn50.py',
    './_base_/datasets/ucf101_fewshot.py',
    './_base_/schedules/tip_adapter.py',
    './_base_/default_runtime.py',
]
model = dict(head=dict(num_classes={{_base_.num_classes}}))
