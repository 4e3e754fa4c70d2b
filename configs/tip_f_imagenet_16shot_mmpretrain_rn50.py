# Tip-Adapter-F, ImageNet, 16 shots, seed 1, 20 epochs, with CLIP RN50's
# visual tower as MMPretrain's ModifiedResNet (weights converted from
# OpenAI's, see the model base). Same numbers as tip_f_imagenet_16shot.py.
_base_ = [
    './_base_/models/mmpretrain_clip_rn50.py',
    './_base_/datasets/imagenet_fewshot.py',
    './_base_/schedules/tip_adapter_f.py',
    './_base_/default_runtime.py',
]

model = dict(
    templates={{_base_.templates}},  # the 7 ImageNet templates
    head=dict(
        num_classes={{_base_.num_classes}},
        train_cache_keys=True,  # Tip-Adapter-F
        alpha={{_base_.init_alpha}},  # 1.17; the loss uses it
        beta=1.0,
        search_scale={{_base_.search_scale}},  # (beta, alpha): (7, 3)
        search_step=(200, 20)))

fewshot_dataloader = dict(dataset=dict(num_shots=16, seed=1))
train_cfg = dict(max_epochs={{_base_.f_epochs}})
