# Tip-Adapter-F, CLIP RN50, EuroSAT, 16 shots, seed 1.
_base_ = [
    './_base_/models/tip_adapter_rn50.py',
    './_base_/datasets/eurosat_fewshot.py',
    './_base_/schedules/tip_adapter_f.py',
    './_base_/default_runtime.py',
]
model = dict(templates={{_base_.templates}}, head={{_base_.tip_f_head}})
train_cfg = dict(max_epochs={{_base_.f_epochs}})
