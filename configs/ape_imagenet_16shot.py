# APE (training-free; Zhu et al., ICCV 2023), CLIP RN50, ImageNet, 16
# shots, seed 1: Tip-Adapter's cache (same BuildCacheHook) with refined
# channels and value weights; (beta, alpha, gamma) searched by the same
# HyperparameterSearchHook on a held-out split of train.
# Paper: APE 63.42 top-1 on ImageNet RN50 16-shot
# (docs/results_sources.md). The reference code searches on ImageNet's val
# split (the test set) and builds its text weights from CuPL (GPT-3) prompts
# plus templates; here the search uses the held-out split
# (configs/_base_/datasets/imagenet_fewshot.py) and the 7 ImageNet templates.
_base_ = ['./tip_imagenet_16shot.py']  # only the head differs

model = dict(
    head=dict(
        _delete_=True,
        type='APEHead',
        num_classes={{_base_.num_classes}},
        # Reference configs/imagenet.yaml (yangyangyang127/APE):
        alpha=2.0,  # init_alpha
        beta=1.0,  # init_beta
        gamma=0.1,  # init_gamma
        feat_num=500,  # channels kept of RN50's 1024
        criterion_weights=(0.7, 0.3),  # w_training_free
        search_scale=(7, 7, 0.5),  # (beta, alpha, gamma)
        search_step=(200, 20, 5),  # (beta, alpha, gamma)
        clip_logit_scale=100.0,
        topk=(1, 5)))
