# ProKeR (training-free: kernel ridge regression on the residual of
# zero-shot CLIP), CLIP RN50, DTD, 16 shots, seed 1. beta and lmbda are
# searched on validation over the official code's grid for this dataset
# (github.com/ybendou/ProKeR, configs/RN50/configs_proker/dtd.yaml:
# linspace(start, end, steps) of each). The fixed values are its
# validation-free 16-shot ones (RN50, transferred from ImageNet).
_base_ = [
    './_base_/models/proker_rn50.py',
    './_base_/datasets/dtd_fewshot.py',
    './_base_/schedules/tip_adapter.py',
    './_base_/default_runtime.py',
]
model = dict(
    templates={{_base_.templates}},
    head=dict(
        num_classes={{_base_.num_classes}},
        beta_range=(0.1, 10.0, 20),
        lmbda_range=(0.001, 10.0, 100)))
