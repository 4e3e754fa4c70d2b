# Zero-shot CLIP RN50 on DTD's 23 new classes (base-to-new): prompts of
# the new class names only; the few-shot loader only names the classes.
# With zero_shot_dtd_base.py it gives the harmonic mean of CoCoOp's table.
_base_ = ['./zero_shot_dtd_base.py']
model = dict(head=dict(num_classes={{_base_.new_classes}}))
fewshot_dataloader = dict(dataset=dict(dataset=dict(subset='new')))
val_dataloader = dict(dataset=dict(subset='new'))
test_dataloader = dict(dataset=dict(subset='new'))
