# ProKeR with a zero base (ProKeRHead(zero_shot_base=False): kernel ridge
# regression of the one-hot labels on every normalised view, no CLIP term) on
# an MMPretrain ResNet-50 with no text tower, your folder dataset:
# data/my_dataset/{train,val,test}/<class name>/*.jpg. beta and lmbda are
# searched on val/ over the official code's widest grid (its DTD and
# Flowers102 one): CLIP's grids need not suit another backbone's features.
_base_ = [
    '../_base_/models/cache_only_resnet50.py',
    '../_base_/datasets/folder_fewshot.py',
    '../_base_/schedules/tip_adapter.py',
    '../_base_/default_runtime.py',
]
data_root = 'data/my_dataset'
model = dict(
    head=dict(
        _delete_=True,
        type='ProKeRHead',
        num_classes=5,
        zero_shot_base=False,
        beta_range=(0.1, 10.0, 20),
        lmbda_range=(0.001, 10.0, 100),
        topk=(1, )))
fewshot_dataloader = dict(
    dataset=dict(num_shots=16, dataset=dict(data_root=data_root)))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = dict(dataset=dict(data_root=data_root))
