# NCM adapted on ImageNet exactly as configs/ncm_imagenet_16shot.py, tested on
# ImageNet-A (ranked among its 200 classes): only the test loader and metric
# differ. tools/test.py THIS_CONFIG CHECKPOINT (the ImageNet run's), or
# tools/sweep.py --setting domain_shift.
_base_ = ['../ncm_imagenet_16shot.py']
test_dataset_name = 'imagenet_a'
test_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='ImageNetA',
        data_root='data/imagenet-adversarial',
        pipeline={{_base_.test_dataloader.dataset.pipeline}}))
test_evaluator = dict(_delete_=True, type='SubsetAccuracy', topk=(1, 5))
