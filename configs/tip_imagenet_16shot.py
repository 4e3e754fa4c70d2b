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
    templates='imagenet',  # the 7 ImageNet templates
    head=dict(
        num_classes=1000,
        alpha=1.17,  # initial alpha
        beta=1.0,  # initial beta
        search_scale=(7, 3),  # (beta, alpha)
        search_step=(200, 20)))

# Shots and seed: --cfg-options fewshot_dataloader.dataset.num_shots=8
#                               fewshot_dataloader.dataset.seed=2
fewshot_dataloader = dict(dataset=dict(num_shots=16, seed=1))
