# CLIP ViT-B/16 (OpenAI weights through open_clip) with MaPLe (MaPLeHead;
# Khattak et al., CVPR 2023, github.com/muzairkhattak/multimodal-prompt-
# learning trainers/maple.py): learned prompts in the first 9 layers of the
# frozen text tower, the image tower's prompts linear maps of them (recipe:
# configs/_base_/schedules/maple.py). The head encodes the images itself,
# so the backbone must be open_clip's ViT with its projected output.
_base_ = ['./tip_adapter_rn50.py']
model = dict(
    backbone=dict(
        type='OpenCLIPVisualBackbone', model_name='ViT-B-16',
        pretrained='openai'),
    text_encoder=dict(
        type='OpenCLIPTextEncoder', model_name='ViT-B-16',
        pretrained='openai'),
    # The prompts are learned; the head still keeps the zero-shot weights
    # of these templates (the experiment configs set the dataset's),
    # unused by its logits.
    templates='default',
    head=dict(
        _delete_=True,
        type='MaPLeHead',
        num_classes=1000,  # the dataset base's, in each experiment config
        # configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml: N_CTX 2,
        # CTX_INIT 'a photo of a', PROMPT_DEPTH 9.
        num_context=2,
        context_init='a photo of a',
        prompt_depth=9,
        topk=(1, 5)))
