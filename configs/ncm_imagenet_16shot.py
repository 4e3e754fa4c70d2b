# Nearest class mean (NCMHead: cosine similarity to the mean of each class's
# normalised few-shot views), CLIP RN50's visual tower, ImageNet, 16 shots,
# seed 1. No text tower and nothing to search: the smallest training-free
# head, one head file (tip_adapter_mm/models/heads/ncm_head.py) and this
# config.
_base_ = ['./tip_imagenet_16shot.py']  # only the head differs
model = dict(
    text_encoder=None,
    head=dict(
        _delete_=True,
        type='NCMHead',
        num_classes={{_base_.num_classes}},
        topk=(1, 5)))
