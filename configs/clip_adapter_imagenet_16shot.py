# CLIP-Adapter, CLIP RN50, ImageNet, 16 shots, seed 1; recipe in
# configs/_base_/schedules/clip_adapter.py.
_base_ = [
    './_base_/models/tip_adapter_rn50.py',
    './_base_/datasets/imagenet_fewshot.py',
    './_base_/schedules/clip_adapter.py',
    './_base_/default_runtime.py',
]
# The official code prompts ImageNet with 'a photo of a {}.' only
# (clip_adapter.py, CUSTOM_TEMPLATES), and CoOp's command trains it
# for 50 epochs (CoOp's COOP.md: *_ep50.yaml for ImageNet).
model = dict(
    templates='default',
    head=dict(
        _delete_=True,
        type='CLIPAdapterHead',
        num_classes={{_base_.num_classes}},
        ratio=0.2,  # the official code's residual ratio
        topk=(1, 5)))
train_cfg = dict(max_epochs=50)
