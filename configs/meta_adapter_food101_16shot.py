# Meta-Adapter, CLIP RN50, food101, 16 shots, seed 1;
# recipe in configs/_base_/schedules/meta_adapter.py (the official code
# ships no config for this dataset; its eight configs are identical).
_base_ = [
    './_base_/models/meta_adapter_rn50.py',
    './_base_/datasets/food101_fewshot.py',
    './_base_/schedules/meta_adapter.py',
    './_base_/default_runtime.py',
]
model = dict(
    templates={{_base_.templates}},
    head=dict(num_classes={{_base_.num_classes}}))
