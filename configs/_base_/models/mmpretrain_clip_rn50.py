# CLIP RN50 with MMPretrain's own visual module: ModifiedResNet (registered
# by MMPretrain for Chinese-CLIP) holding OpenAI's weights, converted by
#   python tools/model_converters/open_clip_to_mmpretrain.py \
#       openai checkpoints/clip_rn50_mmpretrain.pth --model-name RN50
# ('openai': open_clip's tag, downloaded; or a file: OpenAI's RN50.pt, an
# open_clip checkpoint). Everything else is tip_adapter_rn50.py: the
# zero-shot text weights still come from open_clip's RN50 text tower.
# Needs MMPretrain's multi-modal extras: pip install -e ".[multimodal]".
_base_ = ['./tip_adapter_rn50.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='ModifiedResNet',
        depth=50,
        base_channels=64,
        input_size=224,
        num_attn_heads=32,
        output_dim=1024,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/clip_rn50_mmpretrain.pth',
            prefix='backbone.')))
