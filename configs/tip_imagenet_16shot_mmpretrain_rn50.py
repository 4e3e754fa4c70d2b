# Tip-Adapter (training-free), ImageNet, 16 shots, seed 1, with CLIP RN50's
# visual tower as MMPretrain's ModifiedResNet (weights converted from
# OpenAI's, see the model base). Same numbers as tip_imagenet_16shot.py.
_base_ = [
    './_base_/models/mmpretrain_clip_rn50.py',
    './_base_/datasets/imagenet_fewshot.py',
    './_base_/schedules/tip_adapter.py',
    './_base_/default_runtime.py',
]
model = dict(templates={{_base_.templates}}, head={{_base_.tip_head}})
