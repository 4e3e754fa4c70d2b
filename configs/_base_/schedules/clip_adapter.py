# CLIP-Adapter (docs/method.md): train the visual adapter of
# CLIPAdapterHead on the stored support views, as the official code trains
# it. Sources: gaopengcuhk/CLIP-Adapter (clip_adapter.py: a Dassl trainer,
# run "with CoOp's command"), hence CoOp's schedule (./coop.py:
# KaiyangZhou/CoOp configs/trainers/CoOp/rn50.yaml, 16 shots; ImageNet:
# rn50_ep50.yaml, see configs/clip_adapter_imagenet_16shot.py; and
# Dassl.pytorch's defaults):
#   SGD, lr 0.002, momentum 0.9, weight decay 5e-4; batch 32; 200 epochs;
#   one warm-up epoch at a constant lr of 1e-5, then cosine stepped per
#   epoch; the last epoch is the result (TEST.FINAL_MODEL 'last_step');
#   every epoch sees each few-shot image once, freshly augmented; nothing
#   is selected on validation. Under a validation protocol the search hook
#   loads the best epoch on validation before it saves final_searched.pth.
_base_ = ['./coop.py']
