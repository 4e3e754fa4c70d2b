# Tip-Adapter-F, CLIP RN50, ImageNet, 16 shots, seed 1, 20 epochs.
# Paper: 65.51 top-1 (best epoch and search on test). Here the best epoch and
# the search use a held-out split of train
# (configs/_base_/datasets/imagenet_fewshot.py).
_base_ = [
    './_base_/models/tip_adapter_rn50.py',
    './_base_/datasets/imagenet_fewshot.py',
    './_base_/schedules/tip_adapter_f.py',
    './_base_/default_runtime.py',
]

model = dict(
    templates='imagenet',
    head=dict(
        num_classes=1000,
        train_cache_keys=True,  # Tip-Adapter-F
        alpha=1.17,  # initial alpha (the loss uses it)
        beta=1.0,  # initial beta
        search_scale=(7, 3),  # (beta, alpha)
        search_step=(200, 20)))

fewshot_dataloader = dict(dataset=dict(num_shots=16, seed=1))
