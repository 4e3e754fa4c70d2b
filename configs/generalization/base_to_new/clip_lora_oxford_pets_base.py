# CLIP-LoRA, CLIP ViT-B/16, Oxford-IIIT Pets base-to-new, base classes: 16
# shots of the first ceil(37 / 2) = 19 classes, tested on their test images;
# recipe in configs/_base_/schedules/clip_lora.py. As
# configs/clip_lora_oxford_pets_16shot.py on the base classes. The new classes:
# clip_lora_oxford_pets_new.py with this run's checkpoint.
_base_ = [
    '../../_base_/models/clip_lora_vit_b16.py',
    '../../_base_/datasets/oxford_pets_base_to_new.py',
    '../../_base_/schedules/clip_lora.py',
    '../../_base_/default_runtime.py',
]
model = dict(
    templates={{_base_.templates}},
    head=dict(num_classes={{_base_.base_classes}}))
# Their transform (random resized crop 0.08-1, flip) for the few-shot
# images the head trains on.
fewshot_dataloader = dict(
    dataset=dict(
        dataset=dict(
            dataset=dict(pipeline={{_base_.clip_lora_train_pipeline}}))))
# 500 x 16 = 8000 steps of 32 over 19 x 16 = 304 images (10 steps an epoch):
# ceil(8000 / 10) = 800 epochs (8000 steps).
train_cfg = dict(max_epochs=800)
