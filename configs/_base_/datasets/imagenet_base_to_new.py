# ImageNet in the base-to-new setting (CoCoOp, Zhou et al., CVPR 2022): the
# 1000 classes are split by label into base = the first ceil(1000 / 2) = 500
# and new = the other 1000 - 500 = 500 (BaseToNewDataset, relabelled 0..n-1).
# The loaders of imagenet_fewshot.py, each wrapped in a BaseToNewDataset of the
# base classes: shots, val and test are all of the base classes. A config
# testing on the new classes sets subset='new' in the three BaseToNewDataset
# dicts and num_classes to new_classes
# (configs/generalization/base_to_new/*_imagenet_new.py). Report the harmonic
# mean of the two test accuracies (tip_adapter_mm.evaluation.harmonic_mean;
# docs/generalization.md).
# The validation images are the held-out part of ImageNet train
# (HoldoutDataset): the wrapper sits inside it, so the held-out images and
# the shots are drawn from the same base-class samples and never overlap.
_base_ = ['./imagenet_fewshot.py']

base_classes = 500  # ceil(1000 / 2)
new_classes = 500  # 1000 - 500
tip_head = dict(num_classes=base_classes)
tip_f_head = dict(num_classes=base_classes)

fewshot_dataloader = dict(
    dataset=dict(
        dataset=dict(
            _delete_=True,
            type='BaseToNewDataset',
            subset='base',
            dataset={{_base_.fewshot_dataloader.dataset.dataset}})))
val_dataloader = dict(
    dataset=dict(
        dataset=dict(
            _delete_=True,
            type='BaseToNewDataset',
            subset='base',
            dataset={{_base_.val_dataloader.dataset.dataset}})))
test_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='BaseToNewDataset',
        subset='base',
        dataset={{_base_.test_dataloader.dataset}}))
