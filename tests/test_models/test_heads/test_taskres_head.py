"""TaskResHead against NumPy, its gradients, its recipe in the configs
(the official scripts'), and a train-then-test run through the tools."""
import numpy as np
import pytest
import torch
from conftest import CONFIGS
from mmengine.config import Config
from trained_head_checks import (DATASETS, check_dassl_schedule,
                                 numpy_cross_entropy, random_inputs,
                                 read_schedule, samples, top1,
                                 train_then_test)

from tip_adapter_mm.models import TaskResHead
from tip_adapter_mm.models.utils import get_templates

C, N = 12, 4


def fitted_head(scale=0.5, norms=None, seed=0):
    feats, labels, text = random_inputs(seed, 10, C, N)
    head = TaskResHead(num_classes=N, residual_scale=scale)
    head.set_zero_shot_weights(text)
    if norms is not None:
        head.set_text_norms(norms)
    head.fit((torch.randn(2, 8, C), ), torch.arange(8) % N)
    return head, feats, labels, text


def numpy_logits(feats, text, norms, scale, residual):
    classifier = text.double().numpy() * norms + scale * residual
    classifier /= np.linalg.norm(classifier, axis=0, keepdims=True)
    return 100 * feats.double().numpy() @ classifier


def test_fit_starts_the_residual_at_zero_zero_shot_logits():
    head, feats, _, text = fitted_head()
    assert head.is_fitted
    assert head.residual.shape == (C, N)
    assert torch.count_nonzero(head.residual) == 0
    assert [n for n, p in head.named_parameters()
            if p.requires_grad] == ['residual']
    np.testing.assert_allclose(head((feats, )).detach().numpy(),
                               (100 * feats @ text).numpy(), rtol=1e-5,
                               atol=1e-4)


@pytest.mark.parametrize('norms', [None, [3.0, 5.0, 8.0, 0.5]])
def test_logits_and_loss_match_numpy(norms):
    head, feats, labels, text = fitted_head(scale=0.7, norms=norms)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        head.residual.copy_(torch.randn(C, N, generator=g))
    residual = head.residual.detach().double().numpy()
    expected = numpy_logits(feats, text,
                            np.ones(N) if norms is None else np.array(norms),
                            0.7, residual)
    np.testing.assert_allclose(head((feats, )).double().detach().numpy(),
                               expected, rtol=1e-5, atol=1e-4)
    loss = head.loss((feats, ), samples(labels))['loss']
    assert loss.item() == pytest.approx(
        numpy_cross_entropy(expected, labels.numpy()), rel=1e-5)


def test_gradients_reach_exactly_the_residual():
    head, feats, labels, _ = fitted_head(norms=[2.0, 2.0, 3.0, 4.0])
    head.loss((feats, ), samples(labels))['loss'].backward()
    assert {n for n, p in head.named_parameters()
            if p.grad is not None} == {'residual'}
    assert head.residual.grad.abs().sum() > 0
    # Numerical derivative of the NumPy loss for a few entries.
    norms = np.array([2.0, 2.0, 3.0, 4.0])
    text = head.zero_shot_weights
    for (i, j) in [(0, 0), (3, 2), (11, 3)]:
        bumps = []
        for step in (1e-4, -1e-4):
            residual = np.zeros((C, N))
            residual[i, j] = step
            bumps.append(numpy_cross_entropy(
                numpy_logits(feats, text, norms, 0.5, residual),
                labels.numpy()))
        numeric = (bumps[0] - bumps[1]) / 2e-4
        assert head.residual.grad[i, j].item() == pytest.approx(
            numeric, rel=1e-3, abs=1e-6)


def test_checkpoint_loads_into_a_fresh_head():
    head, feats, _, _ = fitted_head(scale=1.0, norms=[1.0, 2.0, 3.0, 4.0])
    with torch.no_grad():
        head.residual.normal_()
    fresh = TaskResHead(num_classes=N)  # scale 0.5 until loaded
    fresh.load_state_dict(head.state_dict())
    assert fresh.is_fitted and float(fresh.residual_scale) == 1.0
    assert torch.equal(fresh.text_norms, head.text_norms)
    assert torch.equal(fresh((feats, )), head((feats, )))


def test_errors_name_what_is_wrong():
    head = TaskResHead(num_classes=N)
    with pytest.raises(RuntimeError, match='no zero_shot_weights'):
        head.fit((torch.randn(2, 4, C), ), torch.arange(4) % N)
    head.set_zero_shot_weights(torch.randn(C, N))
    with pytest.raises(ValueError, match='6 channels but zero_shot_weights'):
        head.fit((torch.randn(2, 4, 6), ), torch.arange(4) % N)
    with pytest.raises(ValueError, match='expected 4 norms'):
        head.set_text_norms(torch.ones(3))
    with pytest.raises(ValueError, match='must be positive'):
        head.set_text_norms(torch.tensor([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(RuntimeError, match='not fitted'):
        head((torch.randn(2, C), ))


def test_recipe_from_the_configs():
    """The official recipe: adam_lr2e-3_B256_ep200.yaml (ImageNet:
    adam_lr2e-4_B256_ep200.yaml), residual scales of train_regular.sh,
    Dassl's defaults."""
    cfg = read_schedule('taskres')
    assert dict(cfg.optim_wrapper.optimizer) == dict(
        type='Adam', lr=2e-3, betas=(0.9, 0.999), weight_decay=5e-4)
    assert cfg.train_cfg.global_batch_size == 256
    check_dassl_schedule(cfg, lr=2e-3, epochs=200)
    assert cfg.train_dataloader.sampler.type == 'ViewCyclingSampler'
    assert cfg.train_dataloader.dataset.type == 'CachedViewsDataset'
    assert cfg.few_shot_cfg.protocol == 'none'
    assert [h.type for h in cfg.custom_hooks] == [
        'BuildCacheHook', 'HyperparameterSearchHook', 'ValidateAfterResumeHook'
    ]
    for dataset in DATASETS:
        cfg = Config.fromfile(str(CONFIGS / f'taskres_{dataset}_16shot.py'))
        head = cfg.model.head
        assert head.type == 'TaskResHead'
        assert head.residual_scale == (1.0 if dataset == 'flowers102' else
                                       0.5)
        assert cfg.dataset_name == dataset
        lr = 2e-4 if dataset == 'imagenet' else 2e-3
        assert cfg.optim_wrapper.optimizer.lr == lr
        check_dassl_schedule(cfg, lr=lr, epochs=200)
        assert cfg.train_cfg.global_batch_size == 256
        base = Config.fromfile(
            str(CONFIGS / f'_base_/datasets/{dataset}_fewshot.py'))
        assert head.num_classes == base.num_classes
        if dataset == 'imagenet':
            # The official prompts: the seven of the base + 'a photo of a'.
            assert list(cfg.model.templates) == list(
                get_templates(base.templates)) + ['a photo of a {}.']
        else:
            assert cfg.model.templates == base.templates


def test_train_then_test_through_the_tools(tiny_clip, image_folders,
                                           tmp_path):
    run = train_then_test(
        tiny_clip, image_folders, tmp_path, 'taskres',
        "dict(_delete_=True, type='TaskResHead', num_classes=3, "
        'topk=(1, ))')
    assert 'TaskResHead fitted on 12 few-shot images x 3' in run['trained']
    assert 'Epoch(val)' not in run['trained']
    first, last = run['states'][1], run['states'][2]
    assert last['head.residual'].shape == (32, 3)
    assert torch.count_nonzero(last['head.residual']) > 0
    assert not torch.equal(first['head.residual'], last['head.residual'])
    for name in last:  # nothing else trains
        if name != 'head.residual':
            assert torch.equal(first[name], last[name]), name
    assert top1(run['tested']) == top1(run['trained'])
    assert ' fitted on ' not in run['tested']
