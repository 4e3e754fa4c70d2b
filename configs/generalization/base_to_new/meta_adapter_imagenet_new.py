# Meta-Adapter, CLIP RN50, ImageNet base-to-new, new classes: the model of
# meta_adapter_imagenet_base.py (tools/test.py THIS_CONFIG CHECKPOINT) tested
# on the other 1000 - 500 = 500 classes, re-prompted with their names (the few-
# shot loader names them). H = harmonic_mean(base, new).
_base_ = ['./meta_adapter_imagenet_base.py']
model = dict(head=dict(num_classes={{_base_.new_classes}}))
fewshot_dataloader = dict(dataset=dict(dataset=dict(subset='new')))
val_dataloader = dict(dataset=dict(dataset=dict(subset='new')))  # holdout's
test_dataloader = dict(dataset=dict(subset='new'))
