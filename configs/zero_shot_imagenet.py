# Zero-shot CLIP RN50 on ImageNet (ZeroShotHead): the 7 ImageNet prompt
# templates, nothing fitted on the few-shot set, nothing searched (the few-shot
# loader only names the classes). Paper (Tip-Adapter, Table 1): 60.33 top-1.
_base_ = ['./tip_imagenet_16shot.py']  # only the head differs
model = dict(
    head=dict(
        _delete_=True,
        type='ZeroShotHead',
        num_classes={{_base_.num_classes}},
        topk=(1, 5)))
