# Tip-Adapter with two caches, ImageNet, 16 shots, seed 1: CLIP RN50
# zero-shot + the CLIP RN50 cache + a cache keyed by a self-supervised
# MMPretrain ResNet-50 (see the model base). The search: Tip-Adapter's
# (beta, alpha) grid with the second cache off, then (beta2, alpha2) on top;
# alpha2 = 0 is in its grid, so the search can decline the second cache.
_base_ = [
    './_base_/models/tip_adapter_rn50_dual_cache_resnet50.py',
    './_base_/datasets/imagenet_fewshot.py',
    './_base_/schedules/tip_adapter.py',
    './_base_/default_runtime.py',
]
model = dict(templates={{_base_.templates}}, head={{_base_.tip_head}})
