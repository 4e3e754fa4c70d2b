# CLIP RN50 (OpenAI weights through open_clip) with CoOp (CoOpHead; Zhou et
# al., IJCV 2022, github.com/KaiyangZhou/CoOp): 16 learned context vectors
# in the frozen text tower, shared by the classes, the class name at the end
# (the paper's main setting; recipe: configs/_base_/schedules/coop.py).
_base_ = ['./tip_adapter_rn50.py']
model = dict(
    # The prompts are learned; the head still keeps the zero-shot weights
    # of these templates (the experiment configs set the dataset's), unused
    # by its logits.
    templates='default',
    head=dict(
        _delete_=True,
        type='CoOpHead',
        num_classes=1000,  # the dataset base's, in each experiment config
        num_context=16,  # N_CTX 16 of the official scripts
        context_init=None,  # random N(0, 0.02^2); or 'a photo of a'
        class_specific=False,  # CSC False
        class_token_position='end',  # CLASS_TOKEN_POSITION end
        topk=(1, 5)))
