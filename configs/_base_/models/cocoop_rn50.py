# CLIP RN50 (OpenAI weights through open_clip) with CoCoOp (CoCoOpHead;
# Zhou et al., CVPR 2022, github.com/KaiyangZhou/CoOp trainers/cocoop.py):
# CoOp's context of 4 vectors from 'a photo of a', shifted per image by a
# meta-net Linear(C, C // 16) - ReLU - Linear(C // 16, D) of the image
# feature; the class name at the end (recipe:
# configs/_base_/schedules/cocoop.py).
_base_ = ['./coop_rn50.py']
model = dict(
    head=dict(
        _delete_=True,
        type='CoCoOpHead',
        num_classes=1000,  # the dataset base's, in each experiment config
        context_init='a photo of a',  # CTX_INIT of the official configs
        reduction=16,  # the meta-net's hidden width vis_dim // 16
        topk=(1, 5)))
