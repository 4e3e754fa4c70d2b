# CLIP-LoRA, CLIP ViT-B/16, Stanford Cars base-to-new, new classes: the model
# of clip_lora_stanford_cars_base.py (tools/test.py THIS_CONFIG CHECKPOINT)
# tested on the other 196 - 98 = 98 classes, re-prompted with their names (the
# few-shot loader names them). H = harmonic_mean(base, new).
_base_ = ['./clip_lora_stanford_cars_base.py']
model = dict(head=dict(num_classes={{_base_.new_classes}}))
fewshot_dataloader = dict(dataset=dict(dataset=dict(subset='new')))
val_dataloader = dict(dataset=dict(subset='new'))
test_dataloader = dict(dataset=dict(subset='new'))
