# DTD, CoOp's train/val/test split (data_root holds the dataset folders).
# The row of SPEC section 3: prompts, search scale, initial alpha, epochs.
_base_ = ['./pipelines.py']

dataset_type = 'CoOpDTD'
data_root = 'data'

num_classes = 47
templates = 'dtd'  # tip_adapter_mm/datasets/templates.py
search_scale = (13, 13)  # (beta, alpha)
init_alpha = 2
f_epochs = 20  # Tip-Adapter-F epochs

fewshot_dataloader = dict(
    batch_size=256,
    num_workers=8,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='FewShotDataset',
        num_shots=16,
        seed=1,
        dataset=dict(
            type=dataset_type,
            data_root=data_root,
            split='train',
            pipeline={{_base_.train_pipeline}})))

val_dataloader = dict(
    batch_size=256,
    num_workers=8,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='val',
        pipeline={{_base_.test_pipeline}}))
val_evaluator = dict(type='Accuracy', topk=(1, 5))

test_dataloader = dict(
    batch_size=256,
    num_workers=8,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='test',
        pipeline={{_base_.test_pipeline}}))
test_evaluator = val_evaluator
