# ProKeR (training-free: kernel ridge regression on the residual of
# zero-shot CLIP), CLIP RN50, ImageNet, 16 shots, seed 1. beta and lmbda are
# searched on validation over the official code's grid for this dataset
# (github.com/ybendou/ProKeR, configs/RN50/configs_proker/imagenet.yaml:
# linspace(start, end, steps) of each). The fixed values are its
# validation-free 16-shot ones (RN50, transferred from ImageNet). The
# official code searches ImageNet on its test split (val = test there);
# here the search uses the held-out part of train. 160,000 support views
# (16 shots x 10 views x 1000 classes) are solved by the head's Nystrom
# approximation on the 16,000 view-averaged shots: a peak of about 7.5 GB
# (float64 16,000 x 16,000 systems) and about 1e14 float64 operations per
# beta, about half an hour on 2 CPU cores (benchmarks/bench_proker.py,
# extrapolated); a data-centre GPU is the intended device.
_base_ = [
    './_base_/models/proker_rn50.py',
    './_base_/datasets/imagenet_fewshot.py',
    './_base_/schedules/tip_adapter.py',
    './_base_/default_runtime.py',
]
model = dict(
    templates={{_base_.templates}},
    head=dict(
        num_classes={{_base_.num_classes}},
        beta_range=(1.5, 3.0, 10),
        lmbda_range=(0.05, 0.25, 10)))
