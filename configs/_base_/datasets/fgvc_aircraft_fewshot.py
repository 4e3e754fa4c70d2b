# FGVCAircraft, CoOp's train/val/test split (data_root holds the dataset
# folders).
_base_ = ['./coop_fewshot.py']

dataset_type = 'CoOpFGVCAircraft'
dataset_name = 'fgvc_aircraft'
num_classes = 100
# Tip-Adapter's settings for this dataset (its reference configs, RN50;
# docs/datasets.md): prompts, initial alpha (beta starts at 1), search scale
# (beta, alpha), Tip-Adapter-F epochs. Experiment configs plug them in.
templates = 'fgvc_aircraft'  # tip_adapter_mm/models/utils/prompts.py
tip_head = dict(num_classes=num_classes, alpha=5, search_scale=(30, 30))
tip_f_head = dict(tip_head, train_cache_keys=True)  # learnable keys
f_epochs = 20

fewshot_dataloader = dict(dataset=dict(dataset=dict(type=dataset_type)))
val_dataloader = dict(dataset=dict(type=dataset_type))
test_dataloader = dict(dataset=dict(type=dataset_type))
