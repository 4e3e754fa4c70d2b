# A folder-of-class-folders dataset (MMPretrain CustomDataset):
#   data_root/train/<class>/*.jpg, data_root/val/<class>/...,
#   data_root/test/<class>/...
# Shots come from train/, the search uses val/, the reported number test/.
# num_workers='auto': loader workers chosen from the machine's cores, GPUs
# and processes (tip_adapter_mm/utils/cpu.py); a number is kept as set.
_base_ = ['./pipelines.py']

dataset_type = 'CustomDataset'
data_root = 'data/my_dataset'

fewshot_dataloader = dict(
    batch_size=64,
    num_workers='auto',
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='FewShotDataset',
        num_shots=16,
        seed=1,
        dataset=dict(
            type=dataset_type,
            data_root=data_root,
            data_prefix='train',
            pipeline={{_base_.train_pipeline}})))

val_dataloader = dict(
    batch_size=64,
    num_workers='auto',
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix='val',
        pipeline={{_base_.test_pipeline}}))
val_evaluator = dict(type='StableAccuracy', topk=(1, ))

test_dataloader = dict(
    batch_size=64,
    num_workers='auto',
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix='test',
        pipeline={{_base_.test_pipeline}}))
test_evaluator = val_evaluator
