# Zero-shot CLIP, CLIP RN50, DTD base-to-new, base classes: 16 shots of the
# first ceil(47 / 2) = 24 classes, tested on their test images; nothing fitted,
# nothing searched; the few-shot loader only names the classes. As
# configs/zero_shot_dtd.py on the base classes. The new classes:
# zero_shot_dtd_new.py with this run's checkpoint.
_base_ = [
    '../../_base_/models/tip_adapter_rn50.py',
    '../../_base_/datasets/dtd_base_to_new.py',
    '../../_base_/schedules/tip_adapter.py',
    '../../_base_/default_runtime.py',
]
model = dict(
    templates={{_base_.templates}},
    head=dict(
        _delete_=True,
        type='ZeroShotHead',
        num_classes={{_base_.base_classes}},
        topk=(1, 5)))
