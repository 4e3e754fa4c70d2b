# Tip-Adapter-F, ImageNet, 16 shots, seed 1, 20 epochs, with CLIP RN50's
# visual tower as MMPretrain's ModifiedResNet (weights converted from
# OpenAI's, see the model base). Same numbers as tip_f_imagenet_16shot.py.
_base_ = [
    './_base_/models/mmpretrain_clip_rn50.py',
    './_base_/datasets/imagenet_fewshot.py',
    './_base_/schedules/tip_adapter_f.py',
    './_base_/default_runtime.py',
]
model = dict(templates={{_base_.templates}}, head={{_base_.tip_f_head}})
train_cfg = dict(max_epochs={{_base_.f_epochs}})
