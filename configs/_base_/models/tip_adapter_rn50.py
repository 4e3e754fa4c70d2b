# CLIP RN50 (OpenAI weights through open_clip) with a Tip-Adapter head.
# `pretrained` is an open_clip tag or the path of a local checkpoint file.
model = dict(
    type='CLIPFewShotClassifier',
    backbone=dict(
        type='OpenCLIPVisualBackbone', model_name='RN50',
        pretrained='openai'),
    text_encoder=dict(
        type='OpenCLIPTextEncoder', model_name='RN50', pretrained='openai'),
    templates='default',
    use_model_logit_scale=False,  # True: logit_scale.exp() instead of 100
    head=dict(
        type='TipAdapterHead',
        num_classes=1000,
        alpha=1.0,
        beta=1.0,
        search_scale=(7, 3),  # (beta, alpha)
        search_step=(200, 20),  # (beta, alpha)
        clip_logit_scale=100.0,
        topk=(1, 5)))
