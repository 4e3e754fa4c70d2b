# Food101 in the base-to-new setting (CoCoOp, Zhou et al., CVPR 2022): the 101
# classes are split by label into base = the first ceil(101 / 2) = 51 and new =
# the other 101 - 51 = 50 (BaseToNewDataset, relabelled 0..n-1). The loaders of
# food101_fewshot.py, each wrapped in a BaseToNewDataset of the base classes:
# shots, val and test are all of the base classes. A config testing on the new
# classes sets subset='new' in the three BaseToNewDataset dicts and num_classes
# to new_classes (configs/generalization/base_to_new/*_food101_new.py). Report
# the harmonic mean of the two test accuracies
# (tip_adapter_mm.evaluation.harmonic_mean; docs/generalization.md).
_base_ = ['./food101_fewshot.py']

base_classes = 51  # ceil(101 / 2)
new_classes = 50  # 101 - 51
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
