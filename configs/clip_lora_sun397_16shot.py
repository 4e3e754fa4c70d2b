# CLIP-LoRA, CLIP ViT-B/16, SUN397, 16 shots, seed 1; recipe in
# configs/_base_/schedules/clip_lora.py (MaxZanella/CLIP-LoRA defaults).
_base_ = [
    './_base_/models/clip_lora_vit_b16.py',
    './_base_/datasets/sun397_fewshot.py',
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
# 500 x 16 = 8000 steps of 32 over 397 x 16 = 6352 images (199 steps an
# epoch): ceil(8000 / 199) = 41 epochs (8159 steps).
train_cfg = dict(max_epochs=41)
