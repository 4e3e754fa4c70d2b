# Tip-Adapter-F as the reference code trains it: a fresh augmentation of
# every image, re-encoded at every iteration (slower; same recipe otherwise).
_base_ = ['./tip_f_imagenet_16shot.py']

train_dataloader = dict(
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(_delete_=True, **{{_base_.fewshot_dataloader.dataset}}))
