# GDA without CLIP's zero-shot term (GDAHead(zero_shot_term=False): the
# Gaussian discriminant scores alone, class means and a shared covariance of
# every normalised view) on an MMPretrain ResNet-50 with no text tower, your
# folder dataset: data/my_dataset/{train,val,test}/<class name>/*.jpg.
# Training-free and nothing to search (alpha would only scale the logits).
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
        type='GDAHead',
        num_classes=5,
        zero_shot_term=False,
        topk=(1, )))
fewshot_dataloader = dict(
    dataset=dict(num_shots=16, dataset=dict(data_root=data_root)))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = dict(dataset=dict(data_root=data_root))
