# Meta-Adapter, CLIP RN50, adapted on ImageNet
# (configs/meta_adapter_imagenet_16shot.py), tested on Oxford-IIIT Pets's 37
# classes re-prompted with their names and prompt templates: tools/test.py
# THIS_CONFIG CHECKPOINT (the ImageNet run's). The loaders are Oxford-IIIT
# Pets's (the few-shot one names the classes); the model and schedule are the
# ImageNet config's.
_base_ = [
    '../../_base_/models/meta_adapter_rn50.py',
    '../../_base_/datasets/oxford_pets_fewshot.py',
    '../../_base_/schedules/meta_adapter.py',
    '../../_base_/default_runtime.py',
]
model = dict(
    templates={{_base_.templates}},
    head=dict(num_classes={{_base_.num_classes}}))
