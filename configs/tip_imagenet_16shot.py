# Tip-Adapter (training-free), CLIP RN50, ImageNet, 16 shots, seed 1.
# Paper (searched on test): 62.03 top-1. Here the search uses a held-out
# split of train (configs/_base_/datasets/imagenet_fewshot.py).
_base_ = [
    './_base_/models/tip_adapter_rn50.py',
    './_base_/datasets/imagenet_fewshot.py',
    './_base_/schedules/tip_adapter.py',
    './_base_/default_runtime.py',
]

model = dict(
    templates={{_base_.templates}},  # the 7 ImageNet templates
    head=dict(
        num_classes={{_base_.num_classes}},
        alpha={{_base_.init_alpha}},  # 1.17 before the search
        beta=1.0,
        search_scale={{_base_.search_scale}},  # (beta, alpha): (7, 3)
        search_step=(200, 20)))

# Shots and seed: --cfg-options fewshot_dataloader.dataset.num_shots=8
#                               fewshot_dataloader.dataset.seed=2
fewshot_dataloader = dict(dataset=dict(num_shots=16, seed=1))
