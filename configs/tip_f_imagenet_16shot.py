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
    templates={{_base_.templates}},  # the 7 ImageNet templates
    head=dict(
        num_classes={{_base_.num_classes}},
        train_cache_keys=True,  # Tip-Adapter-F
        alpha={{_base_.init_alpha}},  # 1.17; the loss uses it
        beta=1.0,
        search_scale={{_base_.search_scale}},  # (beta, alpha): (7, 3)
        search_step=(200, 20)))

fewshot_dataloader = dict(dataset=dict(num_shots=16, seed=1))
train_cfg = dict(max_epochs={{_base_.f_epochs}})
