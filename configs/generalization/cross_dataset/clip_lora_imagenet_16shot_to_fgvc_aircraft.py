# CLIP-LoRA, CLIP ViT-B/16, adapted on ImageNet
# (configs/clip_lora_imagenet_16shot.py), tested on FGVC-Aircraft's 100 classes
# re-prompted with their names and prompt templates: tools/test.py THIS_CONFIG
# CHECKPOINT (the ImageNet run's). The loaders are FGVC-Aircraft's (the few-
# shot one names the classes); the model and schedule are the ImageNet
# config's.
_base_ = [
    '../../_base_/models/clip_lora_vit_b16.py',
    '../../_base_/datasets/fgvc_aircraft_fewshot.py',
    '../../_base_/schedules/clip_lora.py',
    '../../_base_/default_runtime.py',
]
model = dict(
    templates={{_base_.templates}},
    head=dict(num_classes={{_base_.num_classes}}))
# Their transform (random resized crop 0.08-1, flip) for the few-shot
# images the head trains on.
fewshot_dataloader = dict(
    dataset=dict(
        dataset=dict(pipeline={{_base_.clip_lora_train_pipeline}})))
# 500 x 16 = 8000 steps of 32 over 1000 x 16 = 16000 images (500 steps an
# epoch): ceil(8000 / 500) = 16 epochs (8000 steps).
train_cfg = dict(max_epochs=16)
