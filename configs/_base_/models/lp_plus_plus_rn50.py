# CLIP RN50 (OpenAI weights through open_clip) with LP++ (LPPlusPlusHead;
# Huang et al., "LP++: A Surprisingly Strong Linear Probe for Few-Shot
# CLIP", CVPR 2024): a linear probe plus per-class multiples of CLIP's text
# classifier, fitted by full-batch descent with data-derived step sizes.
# Recipe of the official code (FereshteShakeri/FewShot-CLIP-Strong-Baseline:
# configs/base.yaml train_epoch 300; methods/linear_probe_p2.py: SGD with
# momentum 0.9, blending step every 10 epochs, initial blending 250 x the
# mean class text similarity), best epoch on a K-shot validation set there;
# here the epoch is chosen among snapshots by the search.
_base_ = ['./tip_adapter_rn50.py']
model = dict(
    head=dict(
        _delete_=True,
        type='LPPlusPlusHead',
        num_classes=1000,  # the dataset base's, in each experiment config
        epochs=300,
        alpha_update_interval=10,
        momentum=0.9,
        init_alpha_scale=250.0,
        accumulate_alpha_grad=True,  # as the official code does
        snapshot_interval=10,  # the epochs searched; last = validation-free
        solver_dtype='float32',
        topk=(1, 5)))
