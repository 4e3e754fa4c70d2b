# CoCoOp, CLIP RN50, ImageNet, 16 shots, seed 1; recipe in
# configs/_base_/schedules/cocoop.py.
_base_ = [
    './_base_/models/cocoop_rn50.py',
    './_base_/datasets/imagenet_fewshot.py',
    './_base_/schedules/cocoop.py',
    './_base_/default_runtime.py',
]
# The head keeps zero-shot weights of 'a photo of a {}.' only (its logits
# use the learned prompts; the seven-template ensemble is not needed).
model = dict(
    templates='default',
    head=dict(num_classes={{_base_.num_classes}}))
