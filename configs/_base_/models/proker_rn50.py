# CLIP RN50 (OpenAI weights through open_clip) with ProKeR (ProKeRHead;
# Bendou et al., CVPR 2025, github.com/ybendou/ProKeR): kernel ridge
# regression on the residual of zero-shot CLIP, (beta, lmbda) searched on
# each dataset's official grid (set in the experiment configs). The fixed
# values are the official validation-free 16-shot ones (RN50).
_base_ = ['./tip_adapter_rn50.py']
model = dict(
    head=dict(
        _delete_=True,
        type='ProKeRHead',
        num_classes=1000,  # the dataset base's, in each experiment config
        beta=1.7,
        lmbda=0.1,
        topk=(1, 5)))
