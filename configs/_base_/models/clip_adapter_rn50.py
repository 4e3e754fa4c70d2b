# CLIP RN50 (OpenAI weights through open_clip) with CLIP-Adapter
# (CLIPAdapterHead; Gao et al., IJCV 2023,
# github.com/gaopengcuhk/CLIP-Adapter): a residual bottleneck adapter on the
# image features (recipe: configs/_base_/schedules/clip_adapter.py).
_base_ = ['./tip_adapter_rn50.py']
model = dict(
    head=dict(
        _delete_=True,
        type='CLIPAdapterHead',
        num_classes=1000,  # the dataset base's, in each experiment config
        ratio=0.2,  # the official code's residual ratio
        topk=(1, 5)))
