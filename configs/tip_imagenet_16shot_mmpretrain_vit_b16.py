# Tip-Adapter (training-free), ImageNet, 16 shots, seed 1, CLIP ViT-B/16 as
# MMPretrain's VisionTransformer + CLIPProjection (weights converted from
# OpenAI's, see the model base). Paper (searched on test): 70.75 top-1.
_base_ = [
    './_base_/models/mmpretrain_clip_vit_b16.py',
    './_base_/datasets/imagenet_fewshot.py',
    './_base_/schedules/tip_adapter.py',
    './_base_/default_runtime.py',
]

model = dict(
    templates={{_base_.templates}},  # the 7 ImageNet templates
    head=dict(
        num_classes={{_base_.num_classes}},
        alpha={{_base_.init_alpha}},  # 1.17 before the search
        beta=1.0,
        search_scale={{_base_.search_scale}},  # (beta, alpha): (7, 3)
        search_step=(200, 20)))

fewshot_dataloader = dict(dataset=dict(num_shots=16, seed=1))
