"""ProLIPHead against NumPy; its recipe from the configs; end to end through
tools/train.py on the tiny CLIP with pre-projection features."""
import json
import re

import numpy as np
import pytest
import torch
from conftest import CONFIGS, python_tool, run_tool, tiny_config
from mmengine.config import Config

from mmpretrain.structures import DataSample
from tip_adapter_mm.models import CLIPFewShotClassifier, ProLIPHead
from tip_adapter_mm.models.heads.prolip_head import FEW_SHOT_VALIDATION_GRID

D_PRE, D, CLASSES, SHOTS = 12, 6, 4, 3


def problem(seed=0, batch=10, bias=True):
    """Raw pre-projection features, a projection, text weights, labels."""
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(batch, D_PRE))
    w0 = rng.normal(size=(D_PRE, D)) / np.sqrt(D_PRE)
    b0 = rng.normal(size=D) * 0.3 if bias else None
    text = rng.normal(size=(D, CLASSES))
    text /= np.linalg.norm(text, axis=0, keepdims=True)
    labels = rng.integers(0, CLASSES, batch)
    return h, w0, b0, text, labels


def t(x):
    return None if x is None else torch.from_numpy(np.asarray(x)).float()


def head_for(w0, b0, text, **kwargs):
    head = ProLIPHead(num_classes=CLASSES, **kwargs)
    head.set_zero_shot_weights(t(text))
    head.set_visual_projection(t(w0), t(b0))
    return head


def numpy_logits(h, w, b, text, scale=100.0):
    z = h @ w + (0 if b is None else b)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    return scale * z @ text


def numpy_cross_entropy(logits, labels):
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_p[np.arange(len(labels)), labels].mean()


def samples(labels):
    return [DataSample().set_gt_label(int(y)) for y in labels]


def support(seed=0, views=2):
    """Views ``(V, S, D_pre)`` of SHOTS images per class and labels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(CLASSES), SHOTS)
    views = rng.normal(size=(views, len(labels), D_PRE))
    return (t(views), ), torch.from_numpy(labels)


@pytest.mark.parametrize('bias', [True, False])
def test_logits_and_loss_match_numpy(bias):
    h, w0, b0, text, labels = problem(bias=bias)
    head = head_for(w0, b0, text, lambda_reg=0.7)
    # before training: zero-shot CLIP on the tower's own projection
    logits = head((t(h), ))
    np.testing.assert_allclose(logits.detach().numpy(),
                               numpy_logits(h, w0, b0, text), rtol=1e-4,
                               atol=1e-4)
    # a moved projection: the regulariser is the squared Frobenius norm of
    # the move (a sum), weighted by lambda, added to the mean cross-entropy
    move = np.random.default_rng(5).normal(size=w0.shape) * 0.05
    head.proj_weight.data = t(w0 + move)
    logits = numpy_logits(h, w0 + move, b0, text)
    np.testing.assert_allclose(head((t(h), )).detach().numpy(), logits,
                               rtol=1e-4, atol=1e-4)
    losses = head.loss((t(h), ), samples(labels))
    np.testing.assert_allclose(losses['loss'].item(),
                               numpy_cross_entropy(logits, labels),
                               rtol=1e-4)
    np.testing.assert_allclose(losses['loss_reg'].item(),
                               0.7 * (move**2).sum(), rtol=1e-4)
    # predictions: argmax of those logits
    predicted = head.predict((t(h), ))
    assert [int(s.pred_label) for s in predicted] == list(
        logits.argmax(axis=1))


def test_gradients_reach_only_the_projection():
    h, w0, b0, text, labels = problem()
    head = head_for(w0, b0, text, lambda_reg=0.5)
    assert [n for n, p in head.named_parameters()] == ['proj_weight']
    move = 0.05 * torch.randn(D_PRE, D, generator=torch.Generator().
                              manual_seed(0))
    head.proj_weight.data += move
    losses = head.loss((t(h), ), samples(labels))
    (losses['loss'] + losses['loss_reg']).backward()
    # d/dW of lambda ||W - W0||^2 is 2 lambda (W - W0): check it on its own
    head.proj_weight.grad = None
    head.loss((t(h), ), samples(labels))['loss_reg'].backward()
    torch.testing.assert_close(head.proj_weight.grad, 2 * 0.5 * move)
    assert head.initial_proj_weight.grad is None
    assert not head.proj_bias.requires_grad
    # train_bias=True: the bias learns too, regularised the same way
    trained = head_for(w0, b0, text, lambda_reg=0.5, train_bias=True)
    assert [n for n, p in trained.named_parameters()] == [
        'proj_weight', 'proj_bias'
    ]
    trained.proj_bias.data += 0.1
    reg = trained.loss((t(h), ), samples(labels))['loss_reg']
    np.testing.assert_allclose(float(reg), 0.5 * 0.01 * D, rtol=1e-4)
    trained.loss((t(h), ), samples(labels))['loss'].backward()
    assert trained.proj_bias.grad.abs().sum() > 0


def test_fit_keeps_the_shots_and_lambda_is_one_over_them():
    _, w0, b0, text, _ = problem()
    head = head_for(w0, b0, text)
    assert not head.is_fitted
    views, labels = support()
    head.fit(views, labels)
    assert head.is_fitted and int(head.num_shots) == SHOTS
    assert head.hyperparameters == {'lambda_reg': pytest.approx(1 / SHOTS)}
    assert head.validation_free_hyperparameters() == {
        'lambda_reg': pytest.approx(1 / SHOTS)
    }
    assert head.search_grid() == {}  # lambda acts on training only
    # the projection still starts at the tower's
    torch.testing.assert_close(head.proj_weight.detach(), t(w0))
    # a given lambda stays
    fixed = head_for(w0, b0, text, lambda_reg=0.25)
    fixed.fit(views, labels)
    assert fixed.hyperparameters == {'lambda_reg': 0.25}
    assert fixed.validation_free_hyperparameters() == {'lambda_reg': 0.25}


def test_errors_name_what_is_wrong():
    _, w0, b0, text, _ = problem()
    views, labels = support()
    with pytest.raises(RuntimeError, match='no visual projection'):
        ProLIPHead(num_classes=CLASSES).fit(views, labels)
    head = head_for(w0, b0, text)
    projected = (torch.randn(2, len(labels), D), )
    with pytest.raises(ValueError, match=r"12-channel.*got 6 channels.*"
                       r"output='pre_projection'"):
        head.fit(projected, labels)
    with pytest.raises(ValueError, match='same CLIP model'):
        head.set_visual_projection(torch.randn(D_PRE, D + 1))
    with pytest.raises(ValueError, match='bias must be'):
        head.set_visual_projection(t(w0), torch.zeros(D + 1))
    with pytest.raises(ValueError, match='lambda_reg must be >= 0'):
        ProLIPHead(num_classes=CLASSES, lambda_reg=-1)


def test_checkpoint_loads_into_a_fresh_head():
    h, w0, b0, text, _ = problem()
    head = head_for(w0, b0, text)
    head.fit(*support())
    head.proj_weight.data += 0.01
    fresh = ProLIPHead(num_classes=CLASSES)
    fresh.load_state_dict(head.state_dict())
    assert fresh.is_fitted
    assert fresh.hyperparameters == head.hyperparameters
    torch.testing.assert_close(fresh((t(h), )), head((t(h), )))
    assert isinstance(fresh.proj_weight, torch.nn.Parameter)


def test_adam_moves_the_projection_less_with_a_larger_lambda():
    """A few full-batch Adam steps lower the cross-entropy; lambda keeps the
    projection near its start."""
    h, w0, b0, text, labels = problem(batch=40)
    moved = {}
    for lam in (0.0, 100.0):
        head = head_for(w0, b0, text, lambda_reg=lam)
        optimizer = torch.optim.Adam([head.proj_weight], lr=1e-2, eps=1e-4)
        first = None
        for _ in range(20):
            losses = head.loss((t(h), ), samples(labels))
            first = losses['loss'].item() if first is None else first
            optimizer.zero_grad()
            (losses['loss'] + losses['loss_reg']).backward()
            optimizer.step()
        moved[lam] = float((head.proj_weight - head.initial_proj_weight)
                           .pow(2).sum())
        if lam == 0.0:
            assert losses['loss'].item() < first
    assert moved[100.0] < 0.5 * moved[0.0]


def test_classifier_gives_the_projection_and_rejects_projected_towers(
        tiny_clip):
    head = dict(type='ProLIPHead', num_classes=3)
    text = dict(type='OpenCLIPTextEncoder', **tiny_clip)
    model = CLIPFewShotClassifier(
        backbone=dict(type='OpenCLIPVisualBackbone', output='pre_projection',
                      **tiny_clip),
        text_encoder=text, head=head)
    model.build_zero_shot_weights(['red apple', 'green leaf', 'blue sky'])
    assert model.head.has_visual_projection
    weight, bias = model.visual_projection()
    assert bias is None
    torch.testing.assert_close(model.head.initial_proj_weight, weight)
    assert [n for n, p in model.named_parameters() if p.requires_grad
            ] == ['head.proj_weight']
    # A projected tower: the error names the key, the module and the fix.
    with pytest.raises(ValueError, match=r"model\.backbone "
                       r"\(OpenCLIPVisualBackbone\) has no known projection"
                       r".*output='pre_projection'"):
        CLIPFewShotClassifier(
            backbone=dict(type='OpenCLIPVisualBackbone', **tiny_clip),
            text_encoder=text, head=head)
    with pytest.raises(ValueError, match=r'model\.neck '
                       r'\(GlobalAveragePooling\) has no known projection'):
        CLIPFewShotClassifier(
            backbone=dict(type='ResNet', depth=18),
            neck=dict(type='GlobalAveragePooling'), head=head)


def test_recipe_from_the_configs():
    """The official recipe (astra-vision/ProLIP methods/ProLIP.py and
    configs/experiments/few_shot_no_val_lr1e-5_lambda_1_N.yaml): Adam lr
    1e-5 eps 1e-4, cosine over 300 epochs, full batch, one of 300 views per
    epoch, lambda 1/N, no validation, on RN50's pre-projection features."""
    for dataset, classes in (('imagenet', 1000), ('dtd', 47),
                             ('eurosat', 10)):
        cfg = Config.fromfile(
            str(CONFIGS / f'prolip_{dataset}_16shot.py'))
        optimizer = cfg.optim_wrapper.optimizer
        assert optimizer == dict(type='Adam', lr=1e-5, eps=1e-4)
        assert cfg.optim_wrapper.constructor == \
            'TrainableParamsOptimWrapperConstructor'
        assert cfg.train_cfg.type == 'FewShotTrainLoop'
        assert cfg.train_cfg.max_epochs == 300
        assert cfg.train_cfg.global_batch_size == 'all'
        assert cfg.train_dataloader.sampler.type == 'ViewCyclingSampler'
        assert cfg.train_dataloader.dataset.type == 'CachedViewsDataset'
        scheduler = cfg.param_scheduler
        assert (scheduler.type, scheduler.eta_min) == ('CosineAnnealingLR',
                                                       0.0)
        assert 'T_max' not in scheduler and scheduler.convert_to_iter_based
        assert cfg.few_shot_cfg.augment_epoch == 300
        assert cfg.few_shot_cfg.protocol == 'none'
        backbone, head = cfg.model.backbone, cfg.model.head
        assert (backbone.model_name, backbone.pretrained,
                backbone.output) == ('RN50', 'openai', 'pre_projection')
        assert head.type == 'ProLIPHead' and head.num_classes == classes
        assert head.lambda_reg is None and head.clip_logit_scale == 100.0
        assert head.train_bias is False
        assert cfg.model.text_encoder.model_name == 'RN50'
        assert cfg.fewshot_dataloader.dataset.num_shots == 16
    # the official search_lr grid (one training per point)
    assert FEW_SHOT_VALIDATION_GRID == dict(
        lr=(1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8),
        lambda_reg=(10, 1, 0.1, 0.01, 0.001, 0.0001, 0))


PROLIP_EXTRA = """
model = dict(backbone=dict(**clip, output='pre_projection'),
             text_encoder=clip,
             head=dict(_delete_=True, type='ProLIPHead', num_classes=3))
train_cfg = dict(max_epochs=3)
few_shot_cfg = dict(augment_epoch=3, feature_dir={feature_dir!r})
"""


def test_end_to_end_through_train_tool(tiny_clip, image_folders, tmp_path):
    """tools/train.py: fit (lambda = 1/4 for 4 shots), 3 full-batch epochs
    on one view each, no validation (protocol 'none'), test; the support
    views and test features are stored as pre-projection entries."""
    store = tmp_path / 'store'
    config = tiny_config(
        tmp_path / 'prolip.py', tiny_clip, image_folders, num_shots=4,
        augment_epoch=3, schedule='prolip',
        extra=PROLIP_EXTRA.format(feature_dir=str(store)))
    work_dir = tmp_path / 'work'
    output = run_tool(
        python_tool('train.py', str(config), '--work-dir', str(work_dir)))
    # full batch: 12 images, one view each, one iteration per epoch
    assert '12 few-shot images x 3 augmented views' in output
    assert 'global_batch_size 12: 12 per process x 1' in output
    assert "protocol='none'" in output
    assert 'lambda_reg=0.25' in output
    assert len(re.findall(r'Epoch\(train\) \[\d\]', output)) >= 3
    assert 'Epoch(val)' not in output
    top1 = re.findall(r'Epoch\(test\).*accuracy/top1: ([0-9.]+)', output)
    assert top1 and 0 <= float(top1[-1]) <= 100

    state = torch.load(work_dir / 'final_searched.pth',
                       weights_only=False)['state_dict']
    start, trained = (state['head.initial_proj_weight'],
                      state['head.proj_weight'])
    assert start.shape == (32, 32) and not torch.equal(start, trained)
    assert float(state['head.lambda_reg']) == 0.25
    assert int(state['head.num_shots']) == 4

    descriptions = [
        json.loads(p.read_text()) for p in store.glob('*.json')
    ]
    assert {d['kind'] for d in descriptions} >= {'augmented_views',
                                                 'features'}
    for description in descriptions:
        assert description['encoder']['backbone']['output'] == \
            'pre_projection'
