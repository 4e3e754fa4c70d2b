# ProLIP on CLIP RN50 (open_clip, OpenAI weights): the visual tower stops
# before its last projection (the attention pool's c_proj, 2048 -> 1024),
# and the head fine-tunes that projection from its pretrained value. The
# features are pre-projection ones, so they have their own feature-store
# entries (the backbone config differs from the projected towers').
_base_ = ['./tip_adapter_rn50.py']

model = dict(
    backbone=dict(output='pre_projection'),
    head=dict(
        _delete_=True,
        type='ProLIPHead',
        num_classes=1000,
        lambda_reg=None,  # 1 / shots: the paper's validation-free choice
        train_bias=False,  # c_proj's bias stays fixed (official code)
        clip_logit_scale=100.0,
        topk=(1, 5)))
