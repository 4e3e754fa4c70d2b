"""MetaAdapterHead against a NumPy implementation of the official module
(ArsenalCheng/Meta-Adapter main.py, MetaAdapter), its gradients, its
class-agnostic transfer to other classes, its recipe in the configs, and
train on base classes then test on base and new classes through the
tools."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CONFIGS, python_tool, run_tool, tiny_config
from mmengine.config import Config
from trained_head_checks import (DATASETS, numpy_cross_entropy,
                                 random_inputs, read_schedule, samples, top1)

from tip_adapter_mm.models import MetaAdapterHead, OpenCLIPTextEncoder
from tip_adapter_mm.models.heads import FewShotHead
from tip_adapter_mm.models.utils import build_zero_shot_weights, get_templates

C, N = 16, 4
ADAPTER = ['q_proj', 'k_proj', 'gate_weight', 'gate_bias']
#: Images per class of fitted_head(): uneven, so padding is exercised.
LABELS = torch.tensor([2, 0, 1, 0, 3, 2, 0, 1, 3, 0])
NEW = ['c_blue', 'd_yellow']


def fitted_head(seed=0, labels=LABELS, num_classes=N, views=3):
    feats, target, text = random_inputs(seed, 12, C, num_classes)
    g = torch.Generator().manual_seed(seed + 1)
    view_feats = 2 * torch.randn(views, len(labels), C, generator=g)
    torch.manual_seed(seed)
    head = MetaAdapterHead(num_classes=num_classes)
    head.set_zero_shot_weights(text)
    head.fit((view_feats, ), labels)
    return head, feats, target, text, view_feats


def numpy_logits(head, feats, text, view_feats, labels):
    """The official forward written out per class: keys and values are
    [t; s_1..s_K] of the class (its own images only), the query and the
    keys projected, softmax over them with scale 1/sqrt(C), a sigmoid gate
    of t, the residual, normalised; 100 * cosine."""
    wq, wk, wg, bg = (getattr(head, n).detach().double().numpy()
                      for n in ADAPTER)
    t_all = text.double().numpy().T  # (N, C)
    shots = view_feats.double().numpy().mean(axis=0)
    shots /= np.linalg.norm(shots, axis=1, keepdims=True)
    refined = []
    for n, t in enumerate(t_all):
        tokens = np.concatenate([t[None], shots[labels.numpy() == n]])
        q = wq @ t
        k = tokens @ wk.T
        s = k @ q / np.sqrt(C)
        a = np.exp(s - s.max())
        a /= a.sum()
        gate = 1 / (1 + np.exp(-(wg @ t + bg)))
        w = t + gate * (a @ tokens)
        refined.append(w / np.linalg.norm(w))
    return 100 * feats.double().numpy() @ np.stack(refined).T


def test_fit_stores_view_averages_per_class_and_creates_the_adapter():
    head, _, _, _, view_feats = fitted_head()
    assert head.is_fitted
    counts = torch.bincount(LABELS, minlength=N)
    assert head.support.shape == (N, int(counts.max()), C)
    shots = F.normalize(view_feats.mean(0), dim=-1)
    for n in range(N):
        assert head.support_mask[n].tolist() == \
            [True] * int(counts[n]) + [False] * int(counts.max() - counts[n])
        # The images of class n, in the order given.
        torch.testing.assert_close(head.support[n, :int(counts[n])],
                                   shots[LABELS == n])
        assert torch.count_nonzero(head.support[n, int(counts[n]):]) == 0
    # The official init: Xavier-uniform projections and gate, gate bias 1.
    bound = np.sqrt(6 / (2 * C))
    for name in ('q_proj', 'k_proj'):
        weight = getattr(head, name)
        assert weight.shape == (C, C)
        assert weight.abs().max() <= bound
        assert weight.std() > 0.8 * bound / np.sqrt(3)
    assert head.gate_weight.shape == (1, C)
    assert head.gate_weight.abs().max() <= np.sqrt(6 / (C + 1))
    assert head.gate_bias.tolist() == [1.0]
    assert [n for n, p in head.named_parameters()
            if p.requires_grad] == ADAPTER
    with pytest.raises(ValueError, match=r'classes \[3\] have no few-shot'):
        MetaAdapterHead(num_classes=N).fit((torch.randn(2, 3, C), ),
                                           torch.tensor([0, 1, 2]))


def test_logits_and_loss_match_numpy():
    head, feats, target, text, view_feats = fitted_head()
    with torch.no_grad():  # away from the init, gate of both signs
        head.q_proj.mul_(3)
        head.k_proj.add_(0.2)
        head.gate_weight.mul_(-4)
        head.gate_bias.fill_(-0.3)
    expected = numpy_logits(head, feats, text, view_feats, LABELS)
    np.testing.assert_allclose(head((feats, )).double().detach().numpy(),
                               expected, rtol=1e-5, atol=1e-4)
    loss = head.loss((feats, ), samples(target))['loss']
    assert loss.item() == pytest.approx(
        numpy_cross_entropy(expected, target.numpy()), rel=1e-5)
    # Every class equal in size (the official layout): no padding.
    even = torch.arange(8) % N
    head2, feats2, _, text2, views2 = fitted_head(seed=3, labels=even)
    assert bool(head2.support_mask.all())
    np.testing.assert_allclose(
        head2((feats2, )).double().detach().numpy(),
        numpy_logits(head2, feats2, text2, views2, even),
        rtol=1e-5, atol=1e-4)


def test_closed_gate_is_zero_shot_clip_and_init_is_not():
    head, feats, _, text, _ = fitted_head()
    zero_shot = (100 * feats @ text).numpy()
    # At the official init the gate is open (sigmoid(w.t + 1)).
    gates = torch.sigmoid(text.t() @ head.gate_weight.t() + head.gate_bias)
    assert float(gates.detach().min()) > 0.5
    assert not np.allclose(head((feats, )).detach().numpy(), zero_shot,
                           atol=1e-2)
    with torch.no_grad():
        head.gate_bias.fill_(-1e4)  # gate 0
    np.testing.assert_allclose(head((feats, )).detach().numpy(), zero_shot,
                               rtol=1e-5, atol=1e-4)


def test_gradients_reach_exactly_the_adapter():
    head, feats, target, _, _ = fitted_head()
    head.loss((feats, ), samples(target))['loss'].backward()
    trained = {n for n, p in head.named_parameters() if p.grad is not None}
    assert trained == set(ADAPTER)
    for name in ADAPTER:
        assert getattr(head, name).grad.abs().sum() > 0, name
    assert not head.zero_shot_weights.requires_grad
    assert not head.support.requires_grad
    before = head.loss((feats, ), samples(target))['loss'].item()
    with torch.no_grad():
        for name in ADAPTER:
            p = getattr(head, name)
            p -= 0.05 * p.grad
    after = head.loss((feats, ), samples(target))['loss'].item()
    assert after < before


def test_trained_head_applies_to_other_classes_without_training():
    """Train on classes A; give the head the text embeddings and support
    views of other classes B (another count): the logits over B are those
    of a fresh head holding the same adapter weights, fitted on B."""
    head, feats, target, _, _ = fitted_head()
    optimizer = torch.optim.SGD(head.parameters(), lr=0.5)
    for _ in range(3):
        optimizer.zero_grad()
        head.loss((feats, ), samples(target))['loss'].backward()
        optimizer.step()
    trained = {n: getattr(head, n).detach().clone() for n in ADAPTER}

    labels_b = torch.tensor([0, 1, 2, 3, 4, 4, 1])
    _, feats_b, _, text_b, views_b = fitted_head(
        seed=7, labels=labels_b, num_classes=5)
    head.forget_classes(5)
    assert not head.is_fitted and not head.has_zero_shot_weights
    assert head.support.numel() == 0 and head.num_classes == 5
    head.set_zero_shot_weights(text_b)
    head.fit((views_b, ), labels_b)  # no gradient, no step
    for name in ADAPTER:
        assert torch.equal(getattr(head, name), trained[name]), name

    fresh = MetaAdapterHead(num_classes=5)
    fresh.set_zero_shot_weights(text_b)
    fresh.fit((views_b, ), labels_b)
    with torch.no_grad():
        for name in ADAPTER:
            getattr(fresh, name).copy_(trained[name])
    logits = head((feats_b, ))
    assert logits.shape == (12, 5)
    torch.testing.assert_close(logits, fresh((feats_b, )))
    np.testing.assert_allclose(
        logits.double().detach().numpy(),
        numpy_logits(head, feats_b, text_b, views_b, labels_b),
        rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match='adapter takes 16 channels'):
        head.fit((torch.randn(2, 7, 8), ), labels_b)


def test_checkpoint_loads_into_a_fresh_head():
    head, feats, _, _, _ = fitted_head()
    with torch.no_grad():
        head.gate_bias.fill_(0.25)
    fresh = MetaAdapterHead(num_classes=N)
    assert not fresh.is_fitted
    fresh.load_state_dict(head.state_dict())
    assert fresh.is_fitted
    assert torch.equal(fresh.support_mask, head.support_mask)
    assert torch.equal(fresh((feats, )), head((feats, )))
    # Fitted, but without text embeddings: a clear error.
    no_text = MetaAdapterHead(num_classes=N)
    no_text.fit((torch.randn(2, 4, C), ), torch.arange(4))
    with pytest.raises(RuntimeError, match='no zero_shot_weights'):
        no_text((feats, ))


def test_recipe_from_the_configs():
    """main.py run_meta_adapter and configs/*.yaml of the official code."""
    cfg = read_schedule('meta_adapter')
    optimizer = cfg.optim_wrapper.optimizer
    assert dict(optimizer) == dict(type='AdamW', lr=1e-4, eps=1e-4,
                                   weight_decay=0.01)
    assert cfg.optim_wrapper.constructor == \
        'TrainableParamsOptimWrapperConstructor'
    assert cfg.train_cfg.type == 'FewShotTrainLoop'
    assert (cfg.train_cfg.max_epochs, cfg.train_cfg.global_batch_size) == \
        (5, 64)
    scheduler, = cfg.param_scheduler
    assert scheduler.type == 'CosineAnnealingLR'
    assert scheduler.convert_to_iter_based and scheduler.eta_min == 0
    assert 'end' not in scheduler and 'T_max' not in scheduler
    assert cfg.few_shot_cfg.augment_epoch == 10
    assert cfg.few_shot_cfg.protocol == 'none'
    assert cfg.train_dataloader.sampler.type == 'ViewCyclingSampler'
    assert cfg.train_dataloader.dataset.type == 'CachedViewsDataset'
    assert [h.type for h in cfg.custom_hooks] == [
        'BuildCacheHook', 'HyperparameterSearchHook', 'ValidateAfterResumeHook'
    ]
    for dataset in DATASETS:
        cfg = Config.fromfile(
            str(CONFIGS / f'meta_adapter_{dataset}_16shot.py'))
        head = cfg.model.head
        assert (head.type, head.gate_bias_init, head.clip_logit_scale) == \
            ('MetaAdapterHead', 1.0, 100.0)
        assert cfg.model.backbone.model_name == 'RN50'
        assert cfg.dataset_name == dataset
        base = Config.fromfile(
            str(CONFIGS / f'_base_/datasets/{dataset}_fewshot.py'))
        assert head.num_classes == base.num_classes
        # The official prompts are Tip-Adapter's (datasets/*.py).
        assert cfg.model.templates == base.templates
        assert cfg.train_cfg.max_epochs == 5
    assert get_templates('dtd') == ('{} texture.', )


def subset_config(path: Path, tiny_clip, root: Path, subset: str) -> Path:
    """Meta-Adapter's real bases on the tiny CLIP, 2 shots of the
    ``subset`` classes (BaseToNewDataset), 2 epochs of batch 4."""
    def wrap(split, pipeline):
        return (f"dict(_delete_=True, type='BaseToNewDataset', "
                f"subset={subset!r}, dataset=dict(type='CustomDataset', "
                f"data_root=data_root, data_prefix={split!r}, "
                f"pipeline={{{{_base_.{pipeline}}}}}))")
    extra = ('train_cfg = dict(max_epochs=2, global_batch_size=4)\n'
             f"fewshot_dataloader = dict(dataset=dict(num_shots=2, "
             f"dataset={wrap('train', 'train_pipeline')}))\n"
             f"val_dataloader = dict(dataset={wrap('val', 'test_pipeline')})\n"
             f"test_dataloader = dict(dataset={wrap('test', 'test_pipeline')})"
             '\n')
    return tiny_config(
        path, tiny_clip, root, num_shots=2, schedule='meta_adapter',
        model_base='meta_adapter_rn50', extra=extra,
        head="dict(_delete_=True, type='MetaAdapterHead', num_classes=2, "
        'topk=(1, ))')


def test_trained_on_base_then_tested_on_new_classes_through_the_tools(
        tiny_clip, four_classes, tmp_path):
    """tools/train.py on the base classes; tools/test.py of that checkpoint
    on the new classes: the head is re-prompted and fitted on the new
    classes' shots, the adapter unchanged (the paper's online setting)."""
    base = subset_config(tmp_path / 'base.py', tiny_clip, four_classes,
                         'base')
    new = subset_config(tmp_path / 'new.py', tiny_clip, four_classes, 'new')
    work = tmp_path / 'work'
    trained_log = run_tool(
        python_tool('train.py', str(base), '--work-dir', str(work)))
    assert 'MetaAdapterHead fitted on 4 few-shot images x 3' in trained_log
    assert 'Epoch(val)' not in trained_log  # protocol 'none'
    assert 0 <= top1(trained_log) <= 100  # tested after training
    states = [torch.load(work / f'epoch_{e}.pth',
                         weights_only=False)['state_dict'] for e in (1, 2)]
    for name in ADAPTER:  # the adapter trains ...
        assert not torch.equal(states[0][f'head.{name}'],
                               states[1][f'head.{name}']), name
    for name in states[1]:  # ... and nothing else
        if name[len('head.'):] not in ADAPTER:
            assert torch.equal(states[0][name], states[1][name]), name
    checkpoint = work / 'epoch_2.pth'

    saved = tmp_path / 'new_model.pth'
    log = run_tool(
        python_tool('test.py', str(new), str(checkpoint), '--work-dir',
                    str(tmp_path / 'test_new'), '--save-model', str(saved)))
    assert 'Re-prompting MetaAdapterHead' in log
    assert "'c_blue', 'd_yellow'" in log
    assert 'MetaAdapterHead fitted on 4 few-shot images x 3' in log
    trained = states[1]
    adapted = torch.load(saved, weights_only=False)['state_dict']
    for name in ADAPTER:  # kept as trained
        assert torch.equal(adapted[f'head.{name}'], trained[f'head.{name}'])
    assert torch.equal(adapted['head.class_names_digest'],
                       FewShotHead.digest_class_names(NEW))
    # The support is the new classes' 2 shots, their text embeddings the
    # new names'.
    assert adapted['head.support'].shape == (2, 2, 32)
    assert bool(adapted['head.support_mask'].all())
    assert not torch.equal(adapted['head.support'], trained['head.support'])
    encoder = OpenCLIPTextEncoder(**tiny_clip)
    expected = build_zero_shot_weights(encoder, NEW, get_templates('default'))
    torch.testing.assert_close(adapted['head.zero_shot_weights'], expected)
