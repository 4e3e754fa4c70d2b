# CLIP ViT-B/16 with MMPretrain's own modules: VisionTransformer in CLIP's
# arrangement (pre-norm, QuickGELU, LayerNorm eps 1e-5, bias-free patch
# embedding, class token out) + CLIPProjection, holding OpenAI's weights
# converted by
#   python tools/model_converters/open_clip_to_mmpretrain.py \
#       openai checkpoints/clip_vit_b16_mmpretrain.pth --model-name ViT-B-16
# (the tag's QuickGELU flag applies; or a file with
# --model-name ViT-B-16-quickgelu)
# The zero-shot text weights still come from open_clip's ViT-B-16 tower.
# Needs MMPretrain's multi-modal extras: pip install -e ".[multimodal]".
clip_visual = 'checkpoints/clip_vit_b16_mmpretrain.pth'
model = dict(
    type='CLIPFewShotClassifier',
    backbone=dict(
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
    text_encoder=dict(
        type='OpenCLIPTextEncoder', model_name='ViT-B-16',
        pretrained='openai'),
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
