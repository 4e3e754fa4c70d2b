"""CLAPHead against NumPy (constraint weights, logits, the class-adaptive
penalty and its gradient), its validation-free recipe in the configs (the
official code's), and a train-then-test run through the tools."""
import numpy as np
import pytest
import torch
from conftest import CONFIGS, random_problem
from mmengine.config import Config
from trained_head_checks import (DATASETS, check_dassl_schedule,
                                 numpy_cross_entropy, read_schedule, samples,
                                 top1, train_then_test)

from tip_adapter_mm.models import CLAPHead
from tip_adapter_mm.models.utils import get_templates

C, N = 10, 4


def problem(seed=0, norms=None):
    p = random_problem(seed=seed, classes=N, channels=C, shots=3, views=4,
                       num_test=9)
    head = CLAPHead(num_classes=N)
    head.set_zero_shot_weights(p['zero_shot_weights'])
    if norms is not None:
        head.set_text_norms(norms)
    head.fit((p['support'], ), p['support_labels'])
    return head, p


def numpy_constraint_weights(views, labels, text):
    """Mean over each class's normalised views of the zero-shot softmax
    probability of that class."""
    v, s, c = views.shape
    x = views.reshape(v * s, c).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.tile(labels, v)
    logits = 100 * x @ text
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    return np.array([probs[y == k, k].mean() for k in range(text.shape[1])])


def numpy_logits(feats, prototypes):
    w = prototypes / np.linalg.norm(prototypes, axis=0, keepdims=True)
    return 100 * feats @ w


def test_fit_starts_at_the_text_prototypes_with_zero_shot_weights():
    norms = [2.0, 4.0, 6.0, 9.0]
    head, p = problem(norms=norms)
    text = p['zero_shot_weights'].double().numpy()
    np.testing.assert_allclose(head.prototypes.detach().numpy(),
                               text * np.array(norms), rtol=1e-6)
    expected = numpy_constraint_weights(p['support'].numpy(),
                                        p['support_labels'].numpy(), text)
    np.testing.assert_allclose(head.constraint_weights.numpy(), expected,
                               rtol=1e-5, atol=1e-7)
    assert 0 < expected.min() and expected.max() < 1
    assert len(set(np.round(expected, 6))) == N  # class-adaptive
    assert [n for n, p in head.named_parameters()
            if p.requires_grad] == ['prototypes']
    # At the start: zero-shot CLIP and no penalty.
    f = torch.nn.functional.normalize(p['test'], dim=-1)
    np.testing.assert_allclose(head((f, )).detach().numpy(),
                               (100 * f @ p['zero_shot_weights']).numpy(),
                               rtol=1e-5, atol=1e-4)
    assert head.constraint().item() == 0


@pytest.mark.parametrize('norms', [None, [2.0, 4.0, 6.0, 9.0]])
def test_logits_loss_and_penalty_match_numpy(norms):
    head, p = problem(seed=1, norms=norms)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        head.prototypes.add_(0.5 * torch.randn(C, N, generator=g))
    w = head.prototypes.detach().double().numpy()
    t = p['zero_shot_weights'].double().numpy() * (
        np.ones(N) if norms is None else np.array(norms))
    lam = head.constraint_weights.double().numpy()
    f = torch.nn.functional.normalize(p['test'], dim=-1)
    labels = p['test_labels']
    expected = numpy_logits(f.double().numpy(), w)
    np.testing.assert_allclose(head((f, )).double().detach().numpy(),
                               expected, rtol=1e-5, atol=1e-4)
    penalty = np.mean(lam * ((w - t)**2).sum(axis=0))
    losses = head.loss((f, ), samples(labels))
    assert set(losses) == {'loss', 'loss_constraint'}
    assert losses['loss'].item() == pytest.approx(
        numpy_cross_entropy(expected, labels.numpy()), rel=1e-5)
    assert losses['loss_constraint'].item() == pytest.approx(penalty,
                                                             rel=1e-5)


def test_gradients_reach_exactly_the_prototypes():
    head, p = problem(seed=2, norms=[1.5, 2.5, 3.5, 4.5])
    with torch.no_grad():
        head.prototypes.mul_(1.3).add_(0.1)
    # The penalty's gradient: 2 lambda_c (w_c - t_c) / N.
    head.constraint().backward()
    w = head.prototypes.detach().double().numpy()
    t = head.text_base().double().numpy()
    lam = head.constraint_weights.double().numpy()
    np.testing.assert_allclose(head.prototypes.grad.double().numpy(),
                               2 * lam * (w - t) / N, rtol=1e-5, atol=1e-8)
    head.prototypes.grad = None
    f = torch.nn.functional.normalize(p['test'], dim=-1)
    losses = head.loss((f, ), samples(p['test_labels']))
    sum(losses.values()).backward()
    assert {n for n, q in head.named_parameters()
            if q.grad is not None} == {'prototypes'}
    assert head.prototypes.grad.abs().sum() > 0


def test_checkpoint_loads_into_a_fresh_head():
    head, p = problem(seed=3, norms=[1.0, 2.0, 3.0, 4.0])
    with torch.no_grad():
        head.prototypes.add_(0.3)
    fresh = CLAPHead(num_classes=N)
    fresh.load_state_dict(head.state_dict())
    assert fresh.is_fitted
    assert torch.equal(fresh.constraint_weights, head.constraint_weights)
    f = torch.nn.functional.normalize(p['test'], dim=-1)
    assert torch.equal(fresh((f, )), head((f, )))
    assert fresh.constraint().item() == head.constraint().item()


def test_every_class_needs_a_shot():
    head = CLAPHead(num_classes=N)
    head.set_zero_shot_weights(torch.randn(C, N))
    with pytest.raises(ValueError, match=r'classes \[3\] have no few-shot'):
        head.fit((torch.randn(2, 3, C), ), torch.tensor([0, 1, 2]))


def test_recipe_from_the_configs():
    """The validation-free recipe of SGD_lr1e-1_B256_ep300.yaml and Dassl's
    defaults, the same for every dataset."""
    cfg = read_schedule('clap')
    assert dict(cfg.optim_wrapper.optimizer) == dict(
        type='SGD', lr=0.1, momentum=0.9, weight_decay=0.0)
    assert cfg.train_cfg.global_batch_size == 256
    check_dassl_schedule(cfg, lr=0.1, epochs=300)
    assert cfg.train_dataloader.sampler.type == 'ViewCyclingSampler'
    assert cfg.train_dataloader.dataset.type == 'CachedViewsDataset'
    assert cfg.few_shot_cfg.protocol == 'none'
    assert [h.type for h in cfg.custom_hooks] == [
        'BuildCacheHook', 'HyperparameterSearchHook', 'ValidateAfterResumeHook'
    ]
    for dataset in DATASETS:
        cfg = Config.fromfile(str(CONFIGS / f'clap_{dataset}_16shot.py'))
        assert cfg.model.head.type == 'CLAPHead'
        assert cfg.dataset_name == dataset
        assert cfg.optim_wrapper.optimizer.lr == 0.1
        assert cfg.train_cfg.max_epochs == 300
        assert cfg.train_cfg.global_batch_size == 256
        assert cfg.few_shot_cfg.protocol == 'none'
        base = Config.fromfile(
            str(CONFIGS / f'_base_/datasets/{dataset}_fewshot.py'))
        assert cfg.model.head.num_classes == base.num_classes
        if dataset == 'imagenet':
            assert list(cfg.model.templates) == list(
                get_templates(base.templates)) + ['a photo of a {}.']
        else:
            assert cfg.model.templates == base.templates


def test_train_then_test_through_the_tools(tiny_clip, image_folders,
                                           tmp_path):
    run = train_then_test(
        tiny_clip, image_folders, tmp_path, 'clap',
        "dict(_delete_=True, type='CLAPHead', num_classes=3, topk=(1, ))")
    assert 'CLAPHead fitted on 12 few-shot images x 3' in run['trained']
    assert 'Epoch(val)' not in run['trained']
    assert 'loss_constraint' in run['trained']
    first, last = run['states'][1], run['states'][2]
    assert last['head.prototypes'].shape == (32, 3)
    assert not torch.equal(first['head.prototypes'],
                           last['head.prototypes'])
    for name in last:  # nothing else trains
        if name != 'head.prototypes':
            assert torch.equal(first[name], last[name]), name
    assert top1(run['tested']) == top1(run['trained'])
    assert ' fitted on ' not in run['tested']
