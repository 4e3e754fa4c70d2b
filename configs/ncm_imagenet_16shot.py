# Nearest class mean (NCMHead: cosine similarity to the mean of each class's
# normalised few-shot views), CLIP RN50's visual tower, ImageNet, 16 shots,
# seed 1. No text tower and nothing to search: the smallest training-free
# head, one head file (tip_adapter_mm/models/heads/ncm_head.py) and this
# config.
_base_ = [
    './_base_/models/tip_adapter_rn50.py',
    './_base_/datasets/imagenet_fewshot.py',
    './_base_/schedules/tip_adapter.py',
    './_base_/default_runtime.py',
]
model = dict(
    text_encoder=None,
    head=dict(
        _delete_=True,
        type='NCMHead',
        num_classes={{_base_.num_classes}},
        topk=(1, 5)))
