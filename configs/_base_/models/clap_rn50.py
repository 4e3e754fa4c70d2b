# CLIP RN50 (OpenAI weights through open_clip) with CLAP (CLAPHead;
# Silva-Rodriguez et al., CVPR 2024, github.com/jusiro/CLAP): class
# prototypes from the text classifier, trained with a class-adaptive
# penalty (recipe: configs/_base_/schedules/clap.py).
_base_ = ['./tip_adapter_rn50.py']
model = dict(
    head=dict(
        _delete_=True,
        type='CLAPHead',
        num_classes=1000,  # the dataset base's, in each experiment config
        topk=(1, 5)))
