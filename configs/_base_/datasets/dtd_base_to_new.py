# DTD in the base-to-new setting (CoCoOp, Zhou et al., CVPR 2022): the 47
# classes are split by label into base = the first ceil(47 / 2) = 24 and
# new = the other 23 (BaseToNewDataset, relabelled 0..n-1). This base file
# puts the base classes in all three loaders (shots, val, test); a config
# testing on the new classes sets `subset='new'` in the three
# `BaseToNewDataset` dicts and `num_classes` to 23 (see
# configs/generalization/zero_shot_dtd_new.py). Report the harmonic mean
# of the two test accuracies (tip_adapter_mm.evaluation.harmonic_mean;
# docs/generalization.md). Another CoOp dataset: copy this file and change
# the `_base_`, the class counts and the comment.
_base_ = ['./dtd_fewshot.py']

base_classes = 24  # ceil(47 / 2)
new_classes = 23
tip_head = dict(num_classes=base_classes)
tip_f_head = dict(num_classes=base_classes)

fewshot_dataloader = dict(
    dataset=dict(
        dataset=dict(
            _delete_=True,
            type='BaseToNewDataset',
            subset='base',
            dataset=dict(
                type={{_base_.dataset_type}},
                data_root={{_base_.data_root}},
                split='train',
                pipeline={{_base_.train_pipeline}}))))
val_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='BaseToNewDataset',
        subset='base',
        dataset=dict(
            type={{_base_.dataset_type}},
            data_root={{_base_.data_root}},
            split='val',
            pipeline={{_base_.test_pipeline}})))
test_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='BaseToNewDataset',
        subset='base',
        dataset=dict(
            type={{_base_.dataset_type}},
            data_root={{_base_.data_root}},
            split='test',
            pipeline={{_base_.test_pipeline}})))
