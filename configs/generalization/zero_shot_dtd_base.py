# Zero-shot CLIP RN50 on DTD's 24 base classes (base-to-new): prompts of
# the base class names only, nothing fitted, nothing searched.
_base_ = ['./tip_dtd_16shot_base.py']  # only the head differs
model = dict(
    head=dict(
        _delete_=True,
        type='ZeroShotHead',
        num_classes={{_base_.base_classes}},
        topk=(1, 5)))
