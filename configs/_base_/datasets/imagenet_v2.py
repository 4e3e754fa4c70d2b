# ImageNet-V2 (matched frequency) as the test set of a model adapted on
# ImageNet (imagenet_fewshot.py: shots from ImageNet train, search and
# selection on its held-out part). Labels and class names are ImageNet's
# 1000, so the model is tested as it is.
# Layout (docs/generalization.md):
#   data/imagenetv2/imagenetv2-matched-frequency-format-val/<label>/<image>
_base_ = ['./imagenet_fewshot.py']

test_dataset_name = 'imagenet_v2'
test_data_root = 'data/imagenetv2'
test_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='ImageNetV2',
        data_root=test_data_root,
        pipeline={{_base_.test_pipeline}}))
test_evaluator = dict(type='StableAccuracy', topk=(1, 5))
