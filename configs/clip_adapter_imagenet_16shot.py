# CLIP-Adapter, CLIP RN50, ImageNet, 16 shots, seed 1; recipe in
# configs/_base_/schedules/clip_adapter.py.
_base_ = [
    './_base_/models/clip_adapter_rn50.py',
    './_base_/datasets/imagenet_fewshot.py',
    './_base_/schedules/clip_adapter.py',
    './_base_/default_runtime.py',
]
# The official code prompts ImageNet with 'a photo of a {}.' only
# (clip_adapter.py, CUSTOM_TEMPLATES), and CoOp's command trains it
# for 50 epochs (CoOp's COOP.md: *_ep50.yaml for ImageNet).
model = dict(
    templates='default',
    head=dict(num_classes={{_base_.num_classes}}))
train_cfg = dict(max_epochs=50)
