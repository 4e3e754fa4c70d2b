# CLIP RN50 (OpenAI weights through open_clip) with TaskRes (TaskResHead;
# Yu et al., CVPR 2023, github.com/geekyutao/TaskRes): a learned residual on
# the text classifier (recipe: configs/_base_/schedules/taskres.py).
_base_ = ['./tip_adapter_rn50.py']
model = dict(
    head=dict(
        _delete_=True,
        type='TaskResHead',
        num_classes=1000,  # the dataset base's, in each experiment config
        residual_scale=0.5,  # train_regular.sh (Flowers102: 1.0)
        topk=(1, 5)))
