# ImageNet-A as the test set of a model adapted on ImageNet
# (imagenet_fewshot.py: shots from ImageNet train, search and selection
# on its held-out part). Labels and class names are ImageNet's 1000,
# so the model is tested as it is.
# It holds 200 of the classes: SubsetAccuracy ranks only their scores
# (the dataset's metainfo['class_subset']).
# Layout (docs/generalization.md):
#   data/imagenet-adversarial/imagenet-a/<class folder>/<image>
_base_ = ['./imagenet_fewshot.py']

test_dataset_name = 'imagenet_a'
test_data_root = 'data/imagenet-adversarial'
test_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='ImageNetA',
        data_root=test_data_root,
        pipeline={{_base_.test_pipeline}}))
test_evaluator = dict(
    _delete_=True, type='SubsetAccuracy', topk=(1, 5))
