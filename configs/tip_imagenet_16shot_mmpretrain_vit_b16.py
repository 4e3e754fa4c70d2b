# Tip-Adapter (training-free), ImageNet, 16 shots, seed 1, CLIP ViT-B/16 as
# MMPretrain's VisionTransformer + CLIPProjection (weights converted from
# OpenAI's, see the model base). Paper (searched on test): 70.75 top-1.
_base_ = [
    './_base_/models/mmpretrain_clip_vit_b16.py',
    './_base_/datasets/imagenet_fewshot.py',
    './_base_/schedules/tip_adapter.py',
    './_base_/default_runtime.py',
]
model = dict(templates={{_base_.templates}}, head={{_base_.tip_head}})
