# GDA (training-free; Gaussian discriminant analysis with a shared
# covariance), CLIP RN50, ImageNet, 16 shots, seed 1. Published: 63.82 top-1
# (ICLR 2024 "A Hard-to-Beat Baseline for Training-free CLIP-based
# Adaptation"; Tip-Adapter 62.03 on the same features). One line differs from
# configs/tip_imagenet_16shot.py: the head.
_base_ = ['./tip_imagenet_16shot.py']  # only the head differs

model = dict(
    head=dict(
        _delete_=True,
        type='GDAHead',
        num_classes={{_base_.num_classes}},
        alpha=1.0,
        # searched on validation
        alpha_grid=(1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0),
        topk=(1, 5)))
