# CLAP, CLIP RN50, ImageNet, 16 shots, seed 1; validation-free recipe in
# configs/_base_/schedules/clap.py (the same for every dataset).
_base_ = [
    './_base_/models/clap_rn50.py',
    './_base_/datasets/imagenet_fewshot.py',
    './_base_/schedules/clap.py',
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
