# Meta-Adapter (docs/method.md): train the class-agnostic adapter of
# MetaAdapterHead on the stored support views. Sources:
# ArsenalCheng/Meta-Adapter, main.py (run_meta_adapter, lines 75-111;
# the loaders, lines 167-178) and configs/*.yaml (identical for all eight
# datasets it ships: lr 0.0001, train_epoch 5, augment_epoch 10, shots 16):
#   AdamW, lr 1e-4, eps 1e-4, PyTorch's default weight decay 0.01; batch
#   64; 5 epochs; cosine to 0 over all iterations, stepped every
#   iteration; the support features are the average of 10 augmented views
#   of each few-shot image (clip/utils.py build_cache_model).
# The official code keeps the epoch with the best TEST accuracy (main.py
# lines 132-135); here nothing is selected: the last epoch is the result
# (protocol 'none'; 'reference_test' would be the official choice).
# Its training queries are freshly augmented few-shot images; here one
# stored view of each image per epoch (view epoch % augment_epoch).
_base_ = ['./tip_adapter_f.py']

few_shot_cfg = dict(protocol='none')

train_dataloader = dict(sampler=dict(type='ViewCyclingSampler', shuffle=True))

train_cfg = dict(max_epochs=5, global_batch_size=64)

optim_wrapper = dict(
    optimizer=dict(
        _delete_=True, type='AdamW', lr=1e-4, eps=1e-4, weight_decay=0.01))
# Cosine over all iterations of train_cfg.max_epochs (main.py line 78:
# T_max = train_epoch * len(loader), stepped per iteration, line 111).
param_scheduler = [
    dict(type='CosineAnnealingLR', eta_min=0.0, by_epoch=True, begin=0,
         convert_to_iter_based=True),
]
