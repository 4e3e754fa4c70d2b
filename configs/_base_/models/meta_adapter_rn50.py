# CLIP RN50 (OpenAI weights through open_clip) with Meta-Adapter
# (MetaAdapterHead; Cheng et al., NeurIPS 2023,
# github.com/ArsenalCheng/Meta-Adapter): each class's text embedding
# attends to the support features of its class (recipe:
# configs/_base_/schedules/meta_adapter.py). RN50 is the backbone of every
# official config (configs/*.yaml: backbone 'RN50').
_base_ = ['./tip_adapter_rn50.py']
model = dict(
    head=dict(
        _delete_=True,
        type='MetaAdapterHead',
        num_classes=1000,  # the dataset base's, in each experiment config
        gate_bias_init=1.0,  # main.py line 41: alpha_proj's bias at 1
        clip_logit_scale=100.0,  # main.py line 99
        topk=(1, 5)))
