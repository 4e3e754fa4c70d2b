# CoCoOp (docs/method.md): train the context vectors and the meta-net of
# CoCoOpHead on the stored support views (the image tower is frozen).
# Sources: KaiyangZhou/CoOp configs/trainers/CoCoOp/
# vit_b16_c4_ep10_batch1_ctxv1.yaml (used for every dataset by
# scripts/cocoop/*.sh, 16 shots) and Dassl.pytorch's defaults:
#   SGD, lr 0.002, momentum 0.9, weight decay 5e-4; batch 1; 10 epochs;
#   one warm-up epoch at a constant lr of 1e-5, then cosine stepped per
#   epoch; the model of the last epoch is evaluated (nothing is selected on
#   validation); every epoch sees each few-shot image once, freshly
#   augmented. Everything else as CoOp's schedule (configs/_base_/
#   schedules/coop.py, which this one extends).
_base_ = ['./coop.py']

# Batch 1: the text tower encodes the N prompts of every image separately.
train_cfg = dict(max_epochs=10, global_batch_size=1)

# The scheduler is CoOp's: epoch 0 at 1e-5, then cosine from epoch 1 to
# train_cfg.max_epochs (T_max = 9 epochs where Dassl's has 10: epoch e >= 1
# at 0.002 * (1 + cos(pi * (e - 1) / 9)) / 2, up to 10% of lr below
# Dassl's in the middle epochs; it follows max_epochs when that changes).
