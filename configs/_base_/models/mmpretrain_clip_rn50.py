# CLIP RN50 with MMPretrain's own visual module: ModifiedResNet (registered
# by MMPretrain for Chinese-CLIP) holding OpenAI's weights, converted by
#   python tools/model_converters/open_clip_to_mmpretrain.py \
#       openai checkpoints/clip_rn50_mmpretrain.pth --model-name RN50
# ('openai': open_clip's tag, downloaded; or a file: OpenAI's RN50.pt, an
# open_clip checkpoint). The zero-shot text weights still come from
# open_clip's RN50 text tower.
# Needs MMPretrain's multi-modal extras: pip install -e ".[multimodal]".
model = dict(
    type='CLIPFewShotClassifier',
    backbone=dict(
        type='ModifiedResNet',
        depth=50,
        base_channels=64,
        input_size=224,
        num_attn_heads=32,
        output_dim=1024,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/clip_rn50_mmpretrain.pth',
            prefix='backbone.')),
    text_encoder=dict(
        type='OpenCLIPTextEncoder', model_name='RN50', pretrained='openai'),
    templates='default',
    use_model_logit_scale=False,
    head=dict(
        type='TipAdapterHead',
        num_classes=1000,
        alpha=1.0,
        beta=1.0,
        search_scale=(7, 3),  # (beta, alpha)
        search_step=(200, 20),  # (beta, alpha)
        clip_logit_scale=100.0,
        topk=(1, 5)))
