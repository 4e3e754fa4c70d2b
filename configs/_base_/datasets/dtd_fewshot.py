# DTD, CoOp's train/val/test split (data_root holds the dataset folders).
# The row of SPEC section 3: prompts, search scale, initial alpha, epochs.
_base_ = ['./coop_fewshot.py']

dataset_type = 'CoOpDTD'

num_classes = 47
templates = 'dtd'  # tip_adapter_mm/datasets/templates.py
search_scale = (13, 13)  # (beta, alpha)
init_alpha = 2
f_epochs = 20  # Tip-Adapter-F epochs

fewshot_dataloader = dict(dataset=dict(dataset=dict(type=dataset_type)))
val_dataloader = dict(dataset=dict(type=dataset_type))
test_dataloader = dict(dataset=dict(type=dataset_type))
