# The cache model alone with its keys fine-tuned (the Tip-Adapter-F recipe,
# 20 epochs on the cached views), MMPretrain ResNet-50, your folder dataset;
# the best epoch and beta are chosen on val/.
_base_ = [
    '../_base_/models/cache_only_resnet50.py',
    '../_base_/datasets/folder_fewshot.py',
    '../_base_/schedules/tip_adapter_f.py',
    '../_base_/default_runtime.py',
]
data_root = 'data/my_dataset'
model = dict(
    head=dict(
        num_classes=5,
        train_cache_keys=True,  # fine-tune the keys
        alpha=1.0))  # the loss sees alpha * cache logits
fewshot_dataloader = dict(
    dataset=dict(num_shots=16, dataset=dict(data_root=data_root)))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = dict(dataset=dict(data_root=data_root))
train_cfg = dict(max_epochs=20)
