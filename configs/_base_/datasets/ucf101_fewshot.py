# UCF101, CoOp's train/val/test split (data_root holds the dataset folders).
# The row of SPEC section 3: prompts, search scale, initial alpha, epochs.
_base_ = ['./coop_fewshot.py']

dataset_type = 'CoOpUCF101'

num_classes = 101
templates = 'ucf101'  # tip_adapter_mm/datasets/templates.py
search_scale = (7, 3)  # (beta, alpha)
init_alpha = 3
f_epochs = 20  # Tip-Adapter-F epochs

fewshot_dataloader = dict(dataset=dict(dataset=dict(type=dataset_type)))
val_dataloader = dict(dataset=dict(type=dataset_type))
test_dataloader = dict(dataset=dict(type=dataset_type))
