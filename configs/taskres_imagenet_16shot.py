# TaskRes (regular base), CLIP RN50, ImageNet, 16 shots, seed 1; recipe in
# configs/_base_/schedules/taskres.py.
_base_ = [
    './_base_/models/taskres_rn50.py',
    './_base_/datasets/imagenet_fewshot.py',
    './_base_/schedules/taskres.py',
    './_base_/default_runtime.py',
]
# ImageNet prompts of the official code: the seven of the dataset base
# (IMAGENET_TEMPLATES_SELECT) plus 'a photo of a {}.'.
model = dict(
    templates=[
        'itap of a {}.', 'a bad photo of the {}.', 'a origami {}.',
        'a photo of the large {}.', 'a {} in a video game.',
        'art of the {}.', 'a photo of the small {}.', 'a photo of a {}.'
    ],
    head=dict(num_classes={{_base_.num_classes}}))
# adam_lr2e-4_B256_ep200.yaml: lr 2e-4 (the warm-up stays at 1e-5).
optim_wrapper = dict(optimizer=dict(lr=2e-4))
param_scheduler = [
    dict(type='ConstantLR', factor=1e-5 / 2e-4, by_epoch=True, begin=0,
         end=2),
    dict(type='CosineAnnealingLR', eta_min=0.0, by_epoch=True, begin=1),
]
