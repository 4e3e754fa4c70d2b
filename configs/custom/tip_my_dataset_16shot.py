# Your own dataset: data/my_dataset/{train,val,test}/<class name>/*.jpg
_base_ = [
    '../_base_/models/tip_adapter_rn50.py',
    '../_base_/datasets/folder_fewshot.py',
    '../_base_/schedules/tip_adapter.py',
    '../_base_/default_runtime.py',
]
data_root = 'data/my_dataset'
model = dict(templates=['a photo of a {}.'], head=dict(num_classes=5))
fewshot_dataloader = dict(
    dataset=dict(num_shots=16, dataset=dict(data_root=data_root)))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = dict(dataset=dict(data_root=data_root))
