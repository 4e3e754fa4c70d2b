# Zero-shot CLIP RN50 on food101 (ZeroShotHead): the dataset's prompt
# templates, nothing fitted on the few-shot set, nothing searched (the
# few-shot loader only names the classes). Published figures:
# docs/results_sources.md.
_base_ = ['./tip_food101_16shot.py']  # only the head differs
model = dict(
    head=dict(
        _delete_=True,
        type='ZeroShotHead',
        num_classes={{_base_.num_classes}},
        topk=(1, 5)))
