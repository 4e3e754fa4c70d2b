# The loaders shared by the ten CoOp-split datasets: K shots per class from
# `train`, the search and model selection on `val`, the reported number on
# `test`. A dataset's base (e.g. dtd_fewshot.py) inherits this file and sets
# `dataset_type` in the three loaders, plus its settings (docs/datasets.md).
_base_ = ['./pipelines.py']

data_root = 'data'  # holds the dataset folders, as CoOp lays them out

fewshot_dataloader = dict(
    batch_size=256,
    num_workers='auto',
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='FewShotDataset',
        num_shots=16,
        seed=1,
        dataset=dict(
            type=None,
            data_root=data_root,
            split='train',
            pipeline={{_base_.train_pipeline}})))

val_dataloader = dict(
    batch_size=256,
    num_workers='auto',
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=None,
        data_root=data_root,
        split='val',
        pipeline={{_base_.test_pipeline}}))
val_evaluator = dict(type='StableAccuracy', topk=(1, 5))

test_dataloader = dict(
    batch_size=256,
    num_workers='auto',
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=None,
        data_root=data_root,
        split='test',
        pipeline={{_base_.test_pipeline}}))
test_evaluator = val_evaluator
