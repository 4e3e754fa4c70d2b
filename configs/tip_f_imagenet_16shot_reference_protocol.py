# NOT A VALID PROTOCOL. Reproduces the public reference code, which picks the
# best epoch and searches alpha/beta on the ImageNet TEST images; use it only
# to compare with published numbers. A warning is logged.
_base_ = ['./tip_f_imagenet_16shot.py']

val_dataloader = dict(
    dataset=dict(
        _delete_=True,  # validate on the test split itself
        type={{_base_.dataset_type}},
        data_root={{_base_.data_root}},
        split='val',
        pipeline={{_base_.test_pipeline}}))
few_shot_cfg = dict(protocol='reference_test')  # allows the above; warns
