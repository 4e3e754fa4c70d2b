# CLIP ViT-B/16 with MMPretrain's own modules: VisionTransformer in CLIP's
# arrangement (pre-norm, QuickGELU, LayerNorm eps 1e-5, bias-free patch
# embedding, class token out) + CLIPProjection, holding OpenAI's weights
# converted by
#   python tools/model_converters/open_clip_to_mmpretrain.py \
#       openai checkpoints/clip_vit_b16_mmpretrain.pth --model-name ViT-B-16
# (the tag's QuickGELU flag applies; or a file with
# --model-name ViT-B-16-quickgelu). The zero-shot text weights come from
# open_clip's ViT-B-16 text tower; the head is tip_adapter_rn50.py's.
# Needs MMPretrain's multi-modal extras: pip install -e ".[multimodal]".
_base_ = ['./tip_adapter_rn50.py']

clip_visual = 'checkpoints/clip_vit_b16_mmpretrain.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='VisionTransformer',
        arch=dict(
            embed_dims=768,
            num_layers=12,
            num_heads=12,
            feedforward_channels=3072),
        img_size=224,
        patch_size=16,
        pre_norm=True,
        final_norm=True,
        out_type='cls_token',
        patch_cfg=dict(bias=False),
        norm_cfg=dict(type='LN', eps=1e-5),
        layer_cfgs=dict(act_cfg=dict(type='mmpretrain.QuickGELU')),
        init_cfg=dict(
            type='Pretrained', checkpoint=clip_visual, prefix='backbone.')),
    neck=dict(
        type='CLIPProjection',
        in_channels=768,
        out_channels=512,
        init_cfg=dict(
            type='Pretrained', checkpoint=clip_visual, prefix='neck.')),
    text_encoder=dict(model_name='ViT-B-16', pretrained='openai'))
