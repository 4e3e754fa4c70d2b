# Tip-Adapter-F with two caches, ImageNet, 16 shots, seed 1, 20 epochs: both
# key sets (CLIP RN50's and the self-supervised MMPretrain ResNet-50's, see
# the model base) are fine-tuned at the initial alpha, beta, alpha2, beta2;
# then the staged search of tip_imagenet_16shot_dual_cache_resnet50.py.
_base_ = [
    './_base_/models/tip_adapter_rn50_dual_cache_resnet50.py',
    './_base_/datasets/imagenet_fewshot.py',
    './_base_/schedules/tip_adapter_f.py',
    './_base_/default_runtime.py',
]

model = dict(
    templates={{_base_.templates}},  # the 7 ImageNet templates
    head=dict(
        num_classes={{_base_.num_classes}},
        train_cache_keys=True,  # Tip-Adapter-F: both key sets
        alpha={{_base_.init_alpha}},  # 1.17; the loss uses it (and alpha2)
        beta=1.0,
        search_scale={{_base_.search_scale}},  # (beta, alpha): (7, 3)
        search_step=(200, 20)))

fewshot_dataloader = dict(dataset=dict(num_shots=16, seed=1))
train_cfg = dict(max_epochs={{_base_.f_epochs}})
