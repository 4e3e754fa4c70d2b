# ImageNet few-shot: K shots per class from the train split; validation is
# a seeded, class-balanced subset of the train split kept out of the shots
# (ImageNet's own val split is the test set everyone reports).
_base_ = ['./pipelines.py']

dataset_type = 'CLIPImageNet'  # MMPretrain's ImageNet, CLIP's class names
data_root = 'data/imagenet'
holdout = dict(num_per_class=10, seed=0)

dataset_name = 'imagenet'
num_classes = 1000
# Tip-Adapter's settings for this dataset (its reference configs, RN50;
# docs/datasets.md): prompts, initial alpha (beta starts at 1), search scale
# (beta, alpha), Tip-Adapter-F epochs. Experiment configs plug them in.
templates = 'imagenet'  # tip_adapter_mm/models/utils/prompts.py
tip_head = dict(num_classes=num_classes, alpha=1.17, search_scale=(7, 3))
tip_f_head = dict(tip_head, train_cache_keys=True)  # learnable keys
f_epochs = 20

fewshot_dataloader = dict(
    batch_size=256,
    num_workers='auto',
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='FewShotDataset',
        num_shots=16,
        seed=1,
        holdout=holdout,
        dataset=dict(
            type=dataset_type,
            data_root=data_root,
            split='train',
            pipeline={{_base_.train_pipeline}})))

val_dataloader = dict(
    batch_size=256,
    num_workers='auto',
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='HoldoutDataset',
        dataset=dict(
            type=dataset_type,
            data_root=data_root,
            split='train',
            pipeline={{_base_.test_pipeline}}),
        **holdout))
val_evaluator = dict(type='StableAccuracy', topk=(1, 5))

test_dataloader = dict(
    batch_size=256,
    num_workers='auto',
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='val',
        pipeline={{_base_.test_pipeline}}))
test_evaluator = val_evaluator
