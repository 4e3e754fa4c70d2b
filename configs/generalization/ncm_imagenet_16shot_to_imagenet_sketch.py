# NCM adapted on ImageNet exactly as configs/ncm_imagenet_16shot.py, tested on
# ImageNet-Sketch: only the test loader and metric differ. tools/test.py
# THIS_CONFIG CHECKPOINT (the ImageNet run's), or tools/sweep.py --setting
# domain_shift.
_base_ = ['../ncm_imagenet_16shot.py']
test_dataset_name = 'imagenet_sketch'
test_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='ImageNetSketch',
        data_root='data/imagenet-sketch',
        pipeline={{_base_.test_dataloader.dataset.pipeline}}))
test_evaluator = dict(_delete_=True, type='StableAccuracy', topk=(1, 5))
