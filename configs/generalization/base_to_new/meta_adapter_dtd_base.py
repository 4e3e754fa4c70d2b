# Meta-Adapter, CLIP RN50, DTD base-to-new, base classes: 16 shots of the first
# ceil(47 / 2) = 24 classes, tested on their test images; recipe in
# configs/_base_/schedules/meta_adapter.py. As
# configs/meta_adapter_dtd_16shot.py on the base classes. The new classes:
# meta_adapter_dtd_new.py with this run's checkpoint.
_base_ = [
    '../../_base_/models/meta_adapter_rn50.py',
    '../../_base_/datasets/dtd_base_to_new.py',
    '../../_base_/schedules/meta_adapter.py',
    '../../_base_/default_runtime.py',
]
model = dict(
    templates={{_base_.templates}},
    head=dict(num_classes={{_base_.base_classes}}))
