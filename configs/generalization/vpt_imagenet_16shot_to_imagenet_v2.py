# VPT adapted on ImageNet exactly as configs/vpt_imagenet_16shot.py, tested on
# ImageNet-V2 (matched frequency): only the test loader and metric differ.
# tools/test.py THIS_CONFIG CHECKPOINT (the ImageNet run's), or tools/sweep.py
# --setting domain_shift.
_base_ = ['../vpt_imagenet_16shot.py']
test_dataset_name = 'imagenet_v2'
test_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='ImageNetV2',
        data_root='data/imagenetv2',
        pipeline={{_base_.test_dataloader.dataset.pipeline}}))
test_evaluator = dict(_delete_=True, type='StableAccuracy', topk=(1, 5))
