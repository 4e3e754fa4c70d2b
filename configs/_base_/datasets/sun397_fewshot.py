# SUN397, CoOp's train/val/test split (data_root holds the dataset folders).
# The row of SPEC section 3: prompts, search scale, initial alpha, epochs.
_base_ = ['./coop_fewshot.py']

dataset_type = 'CoOpSUN397'

num_classes = 397
templates = 'sun397'  # tip_adapter_mm/datasets/templates.py
search_scale = (12, 10)  # (beta, alpha)
init_alpha = 1.17
f_epochs = 20  # Tip-Adapter-F epochs

fewshot_dataloader = dict(dataset=dict(dataset=dict(type=dataset_type)))
val_dataloader = dict(dataset=dict(type=dataset_type))
test_dataloader = dict(dataset=dict(type=dataset_type))
