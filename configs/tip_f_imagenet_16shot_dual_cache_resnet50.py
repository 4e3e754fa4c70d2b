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
model = dict(templates={{_base_.templates}}, head={{_base_.tip_f_head}})
train_cfg = dict(max_epochs={{_base_.f_epochs}})
