# CLIP RN50's visual tower (OpenAI weights through open_clip) with a linear
# probe (LinearProbeHead): multinomial logistic regression with an L2
# penalty on the normalised features of every augmented view of the
# few-shot images, fitted by full-batch L-BFGS (CLIP paper, Radford et al.
# 2021, App. A.3: scikit-learn's L-BFGS, 1000 iterations, the L2 strength
# swept on a log grid on validation). No text tower.
_base_ = ['./tip_adapter_rn50.py']
model = dict(
    text_encoder=None,  # nothing reads text
    head=dict(
        _delete_=True,
        type='LinearProbeHead',
        num_classes=1000,  # the dataset base's, in each experiment config
        # Inverse L2 strength without validation (protocol 'none'): the
        # value of the CLIP repository's scikit-learn example.
        C=0.316,
        # searched on validation: 10^-3 .. 10^3, two values per decade
        c_grid=[10.0**(k / 2) for k in range(-6, 7)],
        max_iter=1000,
        tol=1e-6,
        solver_dtype='float32',
        topk=(1, 5)))
