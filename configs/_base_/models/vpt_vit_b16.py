# CLIP ViT-B/16 (OpenAI weights through open_clip) with VPT (VPTHead; Jia
# et al., ECCV 2022, github.com/KMnP/vpt), as the VPT baseline of CLIP
# prompt learning (github.com/muzairkhattak/multimodal-prompt-learning,
# trainers/vpt.py): learned prompt tokens inside the frozen image tower;
# the classifier is CLIP's zero-shot text weights of the templates (recipe:
# configs/_base_/schedules/vpt.py). The head encodes the images itself, so
# the backbone must be open_clip's ViT with its projected output.
_base_ = ['./tip_adapter_rn50.py']
model = dict(
    backbone=dict(
        type='OpenCLIPVisualBackbone', model_name='ViT-B-16',
        pretrained='openai'),
    text_encoder=dict(
        type='OpenCLIPTextEncoder', model_name='ViT-B-16',
        pretrained='openai'),
    # The zero-shot weights of these templates are VPT's text classifier.
    # The experiment configs set the dataset's hand-crafted prompts (the
    # ImageNet ensemble of 7); MaPLe's VPT baseline uses 'a photo of a
    # {}.' for every dataset ('default').
    templates='default',
    head=dict(
        _delete_=True,
        type='VPTHead',
        num_classes=1000,  # the dataset base's, in each experiment config
        # vit_b16_c2_ep5_batch4_4.yaml of MaPLe's code: 8 tokens
        # (N_CTX_VISION), deep prompts in all 12 layers
        # (PROMPT_DEPTH_VISION 12).
        num_prompts=8,
        depth='deep',
        prompt_depth=None,  # every layer of the tower
        init='uniform',  # KMnP/vpt's Xavier-uniform bound
        dropout=0.0,  # KMnP/vpt's PROMPT.DROPOUT default
        topk=(1, 5)))
