# Tip-Adapter-F as the reference code trains it: a fresh augmentation of
# every image, re-encoded at every iteration (slower; same recipe otherwise).
# Its train set must equal the cache's few-shot set: override both, e.g.
#   --cfg-options fewshot_dataloader.dataset.num_shots=8
#                 train_dataloader.dataset.num_shots=8
_base_ = ['./tip_f_imagenet_16shot.py']

train_dataloader = dict(
    _delete_=True,
    batch_size=256,  # per process; train_cfg.global_batch_size sets it
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset={{_base_.fewshot_dataloader.dataset}})
