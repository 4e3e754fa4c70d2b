# Training-free few-shot classification with an MMPretrain ResNet-50 and no
# text tower (the cache model alone), on your folder-of-class-folders
# dataset: data/my_dataset/{train,val,test}/<class name>/*.jpg.
# Shots from train/, beta searched on val/, reported on test/.
_base_ = [
    '../_base_/models/cache_only_resnet50.py',
    '../_base_/datasets/folder_fewshot.py',
    '../_base_/schedules/tip_adapter.py',
    '../_base_/default_runtime.py',
]
data_root = 'data/my_dataset'
model = dict(head=dict(num_classes=5))
fewshot_dataloader = dict(
    dataset=dict(num_shots=16, dataset=dict(data_root=data_root)))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = dict(dataset=dict(data_root=data_root))
