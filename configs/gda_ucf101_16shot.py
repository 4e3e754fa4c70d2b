# GDA (training-free; Gaussian discriminant analysis with a shared
# covariance, ICLR 2024), CLIP RN50, ucf101, 16 shots, seed 1:
# alpha searched under few_shot_cfg.protocol. Only the head differs
# from tip_ucf101_16shot.py.
_base_ = ['./tip_ucf101_16shot.py']

model = dict(
    head=dict(
        _delete_=True,
        type='GDAHead',
        num_classes={{_base_.num_classes}},
        alpha=1.0,
        # searched on validation
        alpha_grid=(1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0),
        topk=(1, 5)))
