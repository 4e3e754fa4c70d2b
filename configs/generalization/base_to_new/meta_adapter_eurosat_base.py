# Meta-Adapter, CLIP RN50, EuroSAT base-to-new, base classes: 16 shots of the
# first ceil(10 / 2) = 5 classes, tested on their test images; recipe in
# configs/_base_/schedules/meta_adapter.py. As
# configs/meta_adapter_eurosat_16shot.py on the base classes. The new classes:
# meta_adapter_eurosat_new.py with this run's checkpoint.
_base_ = [
    '../../_base_/models/meta_adapter_rn50.py',
    '../../_base_/datasets/eurosat_base_to_new.py',
    '../../_base_/schedules/meta_adapter.py',
    '../../_base_/default_runtime.py',
]
model = dict(
    templates={{_base_.templates}},
    head=dict(num_classes={{_base_.base_classes}}))
