# CLIP ViT-B/16 (OpenAI weights through open_clip) with CLIP-LoRA
# (CLIPLoRAHead; Zanella and Ben Ayed, CVPRW 2024,
# github.com/MaxZanella/CLIP-LoRA): rank-2 LoRA on the query, key and value
# projections of every block of both towers (the official defaults of
# run_utils.py; recipe: configs/_base_/schedules/clip_lora.py). The head
# trains inside open_clip's image tower, so the backbone must be
# OpenCLIPVisualBackbone with its projected output and no neck.
_base_ = ['./tip_adapter_rn50.py']
model = dict(
    backbone=dict(model_name='ViT-B-16', pretrained='openai'),
    text_encoder=dict(model_name='ViT-B-16', pretrained='openai'),
    # The head keeps zero-shot weights of these templates (the experiment
    # configs set the dataset's), unused by its logits: it prompts with
    # its own template.
    templates='default',
    use_model_logit_scale=False,  # the official fixed 100
    head=dict(
        _delete_=True,
        type='CLIPLoRAHead',
        num_classes=1000,  # the dataset base's, in each experiment config
        rank=2,  # --r 2
        alpha=1.0,  # --alpha 1 (update scale alpha / sqrt(r), their code)
        dropout=0.25,  # --dropout_rate 0.25
        params=('q', 'k', 'v'),  # --params q k v
        position='all',  # --position all
        encoder='both',  # --encoder both
        template='a photo of a {}.',  # every dataset's in their code
        clip_logit_scale=100.0,  # main.py: logit_scale = 100
        topk=(1, 5)))
