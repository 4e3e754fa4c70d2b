# CLIP-LoRA, CLIP ViT-B/16, Stanford Cars, 16 shots, seed 1; recipe in
# configs/_base_/schedules/clip_lora.py (MaxZanella/CLIP-LoRA defaults).
_base_ = [
    './_base_/models/clip_lora_vit_b16.py',
    './_base_/datasets/stanford_cars_fewshot.py',
    './_base_/schedules/clip_lora.py',
    './_base_/default_runtime.py',
]
model = dict(
    templates={{_base_.templates}},
    head=dict(num_classes={{_base_.num_classes}}))
# Their transform (random resized crop 0.08-1, flip) for the few-shot
# images the head trains on.
fewshot_dataloader = dict(
    dataset=dict(
        dataset=dict(pipeline={{_base_.clip_lora_train_pipeline}})))
# 500 x 16 = 8000 steps of 32 over 196 x 16 = 3136 images (98 steps an
# epoch): ceil(8000 / 98) = 82 epochs (8036 steps).
train_cfg = dict(max_epochs=82)
