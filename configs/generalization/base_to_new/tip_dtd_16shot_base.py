# Tip-Adapter (training-free), CLIP RN50, DTD base-to-new, base classes:
# 16 shots of the 24 base classes, search on their val images, tested on
# their test images. Tip-Adapter cannot be tested on the new classes (its
# cache holds only base-class shots; docs/generalization.md).
_base_ = [
    '../../_base_/models/tip_adapter_rn50.py',
    '../../_base_/datasets/dtd_base_to_new.py',
    '../../_base_/schedules/tip_adapter.py',
    '../../_base_/default_runtime.py',
]
model = dict(templates={{_base_.templates}}, head={{_base_.tip_head}})
