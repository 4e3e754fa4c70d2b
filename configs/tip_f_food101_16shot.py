# Tip-Adapter-F, CLIP RN50, Food101, 16 shots, seed 1.
_base_ = [
    './_base_/models/tip_adapter_rn50.py',
    './_base_/datasets/food101_fewshot.py',
    './_base_/schedules/tip_adapter_f.py',
    './_base_/default_runtime.py',
]

model = dict(
    templates={{_base_.templates}},
    head=dict(
        num_classes={{_base_.num_classes}},
        train_cache_keys=True,
        alpha={{_base_.init_alpha}},
        beta=1.0,
        search_scale={{_base_.search_scale}},
        search_step=(200, 20)))

train_cfg = dict(max_epochs={{_base_.f_epochs}})
