"""CLIPAdapterHead against NumPy, its gradients, its recipe in the configs
(the official code's), and a train-then-test run through the tools."""
import math

import numpy as np
import pytest
import torch
from conftest import CONFIGS
from mmengine.config import Config
from trained_head_checks import (DATASETS, check_dassl_schedule,
                                 numpy_cross_entropy, random_inputs,
                                 read_schedule, samples, top1,
                                 train_then_test)

from tip_adapter_mm.models import CLIPAdapterHead

C, N = 16, 5


def fitted_head(ratio=0.3, seed=0):
    feats, labels, text = random_inputs(seed, 12, C, N)
    head = CLIPAdapterHead(num_classes=N, ratio=ratio)
    head.set_zero_shot_weights(text)
    torch.manual_seed(seed)
    head.fit((torch.randn(3, 6, C), ), torch.arange(6) % N)
    return head, feats, labels, text


def numpy_logits(head, feats, text, ratio):
    f = feats.double().numpy()
    down = head.adapter_down.detach().double().numpy()
    up = head.adapter_up.detach().double().numpy()
    g = np.maximum(np.maximum(f @ down.T, 0) @ up.T, 0)
    adapted = ratio * g + (1 - ratio) * f
    adapted /= np.linalg.norm(adapted, axis=1, keepdims=True)
    return 100 * adapted @ text.double().numpy()


def test_fit_creates_a_bias_free_bottleneck_initialised_as_linear():
    head, *_ = fitted_head()
    assert head.is_fitted
    assert head.adapter_down.shape == (C // 4, C)
    assert head.adapter_up.shape == (C, C // 4)
    # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    assert head.adapter_down.abs().max() <= 1 / math.sqrt(C)
    assert head.adapter_up.abs().max() <= 1 / math.sqrt(C // 4)
    assert head.adapter_down.std() > 0.5 / math.sqrt(3 * C)
    assert [n for n, p in head.named_parameters()
            if p.requires_grad] == ['adapter_down', 'adapter_up']
    with pytest.raises(ValueError, match='no bottleneck'):
        CLIPAdapterHead(num_classes=N, reduction=32).fit(
            (torch.randn(2, 3, C), ), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r'ratio must be in \[0, 1\]'):
        CLIPAdapterHead(num_classes=N, ratio=1.5)


def test_logits_and_loss_match_numpy():
    head, feats, labels, text = fitted_head(ratio=0.3)
    with torch.no_grad():  # weights away from the init, both signs
        head.adapter_down.mul_(3).add_(0.05)
        head.adapter_up.mul_(-2)
    expected = numpy_logits(head, feats, text, 0.3)
    np.testing.assert_allclose(head((feats, )).double().detach().numpy(),
                               expected, rtol=1e-5, atol=1e-4)
    loss = head.loss((feats, ), samples(labels))['loss']
    assert loss.item() == pytest.approx(
        numpy_cross_entropy(expected, labels.numpy()), rel=1e-5)
    # ratio 0 is zero-shot CLIP.
    head.ratio.fill_(0)
    np.testing.assert_allclose(
        head((feats, )).detach().numpy(),
        (100 * feats @ text).numpy(), rtol=1e-5, atol=1e-4)


def test_raw_inputs_give_the_logits_of_normalised_ones():
    """The official code adapts the raw features; the adapter is positively
    homogeneous, so the normalised features this head takes are
    equivalent."""
    head, feats, _, _ = fitted_head()
    scales = torch.linspace(0.5, 8.0, len(feats))[:, None]
    np.testing.assert_allclose(
        head((feats * scales, )).detach().numpy(),
        head((feats, )).detach().numpy(), rtol=1e-5, atol=1e-4)


def test_gradients_reach_exactly_the_adapter():
    head, feats, labels, text = fitted_head()
    head.loss((feats, ), samples(labels))['loss'].backward()
    trained = {n for n, p in head.named_parameters() if p.grad is not None}
    assert trained == {'adapter_down', 'adapter_up'}
    assert head.adapter_down.grad.abs().sum() > 0
    assert head.adapter_up.grad.abs().sum() > 0
    assert not head.zero_shot_weights.requires_grad
    # A step against the gradient lowers the loss.
    with torch.no_grad():
        for p in (head.adapter_down, head.adapter_up):
            p -= 0.05 * p.grad
    after = head.loss((feats, ), samples(labels))['loss'].item()
    before = numpy_cross_entropy(
        numpy_logits(fitted_head()[0], feats, text, 0.3), labels.numpy())
    assert after < before


def test_checkpoint_loads_into_a_fresh_head():
    head, feats, _, _ = fitted_head(ratio=0.4)
    fresh = CLIPAdapterHead(num_classes=N)  # ratio 0.2 until loaded
    assert not fresh.is_fitted
    fresh.load_state_dict(head.state_dict())
    assert fresh.is_fitted and float(fresh.ratio) == 0.4
    assert torch.equal(fresh((feats, )), head((feats, )))


def test_recipe_from_the_configs():
    """The official recipe: CoOp's rn50.yaml (ImageNet: rn50_ep50.yaml)
    and Dassl's defaults; the residual ratio of the official code."""
    cfg = read_schedule('clip_adapter')
    optimizer = cfg.optim_wrapper.optimizer
    assert dict(optimizer) == dict(type='SGD', lr=0.002, momentum=0.9,
                                   weight_decay=5e-4)
    assert cfg.optim_wrapper.constructor == \
        'TrainableParamsOptimWrapperConstructor'
    assert cfg.train_cfg.type == 'FewShotTrainLoop'
    assert cfg.train_cfg.global_batch_size == 32
    check_dassl_schedule(cfg, lr=0.002, epochs=200)
    # One freshly augmented view of each image per epoch; last epoch.
    assert cfg.train_dataloader.sampler.type == 'ViewCyclingSampler'
    assert cfg.train_dataloader.dataset.type == 'CachedViewsDataset'
    assert cfg.few_shot_cfg.protocol == 'none'
    assert [h.type for h in cfg.custom_hooks] == [
        'BuildCacheHook', 'HyperparameterSearchHook', 'ValidateAfterResumeHook'
    ]
    for dataset in DATASETS:
        cfg = Config.fromfile(
            str(CONFIGS / f'clip_adapter_{dataset}_16shot.py'))
        head = cfg.model.head
        assert (head.type, head.ratio) == ('CLIPAdapterHead', 0.2)
        assert cfg.dataset_name == dataset
        base = Config.fromfile(
            str(CONFIGS / f'_base_/datasets/{dataset}_fewshot.py'))
        assert head.num_classes == base.num_classes
        if dataset == 'imagenet':
            assert cfg.model.templates == 'default'  # 'a photo of a {}.'
            check_dassl_schedule(cfg, lr=0.002, epochs=50)
        else:
            assert cfg.model.templates == base.templates
            assert cfg.train_cfg.max_epochs == 200
        assert cfg.train_cfg.global_batch_size == 32


def test_train_then_test_through_the_tools(tiny_clip, image_folders,
                                           tmp_path):
    run = train_then_test(
        tiny_clip, image_folders, tmp_path, 'clip_adapter',
        "dict(_delete_=True, type='CLIPAdapterHead', num_classes=3, "
        'topk=(1, ))')
    assert 'CLIPAdapterHead fitted on 12 few-shot images x 3' in \
        run['trained']
    # protocol 'none': nothing validated while training.
    assert 'Epoch(val)' not in run['trained']
    first, last = run['states'][1], run['states'][2]
    assert last['head.adapter_down'].shape == (8, 32)
    assert not torch.equal(first['head.adapter_down'],
                           last['head.adapter_down'])
    for name in last:  # nothing else trains
        if not name.startswith('head.adapter_'):
            assert torch.equal(first[name], last[name]), name
    # The saved last epoch gives the reported test accuracy again.
    assert top1(run['tested']) == top1(run['trained'])
    assert ' fitted on ' not in run['tested']
