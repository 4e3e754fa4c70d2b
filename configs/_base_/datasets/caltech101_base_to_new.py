# Caltech101 in the base-to-new setting (CoCoOp, Zhou et al., CVPR 2022): the
# 100 classes are split by label into base = the first ceil(100 / 2) = 50 and
# new = the other 100 - 50 = 50 (BaseToNewDataset, relabelled 0..n-1). The
# loaders of caltech101_fewshot.py, each wrapped in a BaseToNewDataset of the
# base classes: shots, val and test are all of the base classes. A config
# testing on the new classes sets subset='new' in the three BaseToNewDataset
# dicts and num_classes to new_classes
# (configs/generalization/base_to_new/*_caltech101_new.py). Report the harmonic
# mean of the two test accuracies (tip_adapter_mm.evaluation.harmonic_mean;
# docs/generalization.md).
_base_ = ['./caltech101_fewshot.py']

base_classes = 50  # ceil(100 / 2)
new_classes = 50  # 100 - 50
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
        _delete_=True,
        type='BaseToNewDataset',
        subset='base',
        dataset={{_base_.val_dataloader.dataset}}))
test_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='BaseToNewDataset',
        subset='base',
        dataset={{_base_.test_dataloader.dataset}}))
