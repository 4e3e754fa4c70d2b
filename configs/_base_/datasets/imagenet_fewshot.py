# ImageNet few-shot: K shots per class from the train split; validation is
# a seeded, class-balanced subset of the train split kept out of the shots
# (ImageNet's own val split is the test set everyone reports).
_base_ = ['./pipelines.py']

dataset_type = 'CLIPImageNet'  # MMPretrain's ImageNet, CLIP's class names
data_root = 'data/imagenet'
holdout = dict(num_per_class=10, seed=0)

num_classes = 1000
templates = 'imagenet'  # the 7 templates, tip_adapter_mm/datasets/templates.py
search_scale = (7, 3)  # (beta, alpha)
init_alpha = 1.17
f_epochs = 20  # Tip-Adapter-F epochs

fewshot_dataloader = dict(
    batch_size=256,
    num_workers=8,
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
    num_workers=8,
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
    num_workers=8,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='val',
        pipeline={{_base_.test_pipeline}}))
test_evaluator = val_evaluator
