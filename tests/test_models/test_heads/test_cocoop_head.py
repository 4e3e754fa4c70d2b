"""CoCoOpHead: CoOp's context shifted per image by a meta-net, in the tiny
open_clip text tower, checked against CoOp and against open_clip's own
``encode_text`` with the shifted context spliced in by hand."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CONFIGS
from mmengine.config import Config
from test_coop_head import (CLASSES, N, hand_prompts, image_feats,
                            open_clip_text)
from trained_head_checks import (DATASETS, WARMUP_LR, config_lrs,
                                 read_schedule, samples, top1,
                                 train_then_test)

from tip_adapter_mm.models import CoCoOpHead, CoOpHead, OpenCLIPTextEncoder

WIDTH = 32  # the tiny model's image features and token embeddings
META = ['ctx', 'meta_down', 'meta_down_bias', 'meta_up', 'meta_up_bias']


@pytest.fixture(scope='module')
def encoder(tiny_clip):
    return OpenCLIPTextEncoder(**tiny_clip)


def fitted(cls, encoder, seed=0, **kwargs):
    head = cls(num_classes=N, **kwargs)
    head.set_text_tower(encoder.clip, encoder.tokenizer, CLASSES)
    head.set_zero_shot_weights(torch.zeros(WIDTH, N))
    torch.manual_seed(seed)
    head.fit((torch.randn(2, 4, WIDTH), ), torch.tensor([0, 1, 2, 0]))
    return head


def test_meta_net_shapes_and_state(encoder):
    head = fitted(CoCoOpHead, encoder, reduction=4)
    assert head.ctx.shape == (4, WIDTH)  # 'a photo of a'
    assert head.meta_down.shape == (WIDTH // 4, WIDTH)
    assert head.meta_down_bias.shape == (WIDTH // 4, )
    assert head.meta_up.shape == (WIDTH, WIDTH // 4)
    assert head.meta_up_bias.shape == (WIDTH, )
    assert set(head.state_dict()) == {
        'is_searched', 'clip_logit_scale', 'zero_shot_weights', *META,
        'class_names_digest'
    }
    with pytest.raises(ValueError, match='no hidden layer'):
        fitted(CoCoOpHead, encoder, reduction=64)


def test_zero_meta_net_output_is_coop(encoder):
    """With the meta-net's last layer zero the shift is zero: CoOp's
    logits with the same context."""
    head = fitted(CoCoOpHead, encoder, reduction=4)
    with torch.no_grad():
        head.meta_up.zero_()
        head.meta_up_bias.zero_()
    coop = fitted(CoOpHead, encoder, context_init='a photo of a')
    torch.testing.assert_close(coop.ctx, head.ctx, rtol=0, atol=0)
    f = image_feats()
    # Every image's prompts are CoOp's, bit for bit; the logits then agree
    # up to the round-off of a row-by-row product (relative 1e-6).
    text = head.image_text_features(f).detach()
    for i in range(len(f)):
        torch.testing.assert_close(text[i], coop.text_features().detach(),
                                   rtol=0, atol=0)
    torch.testing.assert_close(head((f, )), coop((f, )), rtol=1e-6,
                               atol=1e-6)
    # ... and a non-zero last layer changes them.
    other = fitted(CoCoOpHead, encoder, reduction=4)
    assert (other((f, )) - coop((f, ))).abs().max() > 1e-3


def test_logits_match_open_clip_per_image(encoder):
    """Image i's logits: its normalised feature against open_clip's
    ``encode_text`` of the prompts with ``ctx + pi(f_i)`` spliced in,
    the meta-net written out here."""
    head = fitted(CoCoOpHead, encoder, reduction=4)
    with torch.no_grad():  # a meta-net whose shift is far from zero
        for name in META[1:]:
            getattr(head, name).mul_(5.0)
    f = image_feats(batch=4)
    logits = head((f, ))
    assert logits.shape == (4, N)
    down, down_b = head.meta_down.detach(), head.meta_down_bias.detach()
    up, up_b = head.meta_up.detach(), head.meta_up_bias.detach()
    shifts = []
    for i in range(len(f)):
        hidden = np.maximum(f[i].numpy() @ down.numpy().T + down_b.numpy(),
                            0.0)
        shift = torch.from_numpy(hidden @ up.numpy().T + up_b.numpy())
        shifts.append(shift)
        ctx = head.ctx.detach() + shift
        ids, embeds, _ = hand_prompts(encoder, ctx, 'end')
        text = open_clip_text(encoder, ids, embeds)
        torch.testing.assert_close(logits[i], 100.0 * text @ f[i], rtol=1e-5,
                                   atol=1e-5)
    # The shifts differ between images (the logits are not CoOp's).
    assert (shifts[0] - shifts[1]).abs().max() > 1e-2


def test_gradients_reach_exactly_context_and_meta_net(encoder):
    head = fitted(CoCoOpHead, encoder, reduction=4)
    f, labels = image_feats(batch=3), torch.tensor([0, 1, 2])
    losses = head.loss((f, ), samples(labels))
    sum(losses.values()).backward()
    assert [n for n, p in head.named_parameters() if p.requires_grad] == META
    for name in META:
        grad = getattr(head, name).grad
        assert grad is not None and grad.abs().max() > 0, name
    for name, p in head.text_tower.named_parameters():
        assert p.grad is None and not p.requires_grad, name
    torch.testing.assert_close(losses['loss'],
                               F.cross_entropy(head((f, )), labels))


def test_trained_head_reloads_from_its_state(encoder):
    head = fitted(CoCoOpHead, encoder, reduction=4)
    params = [getattr(head, name) for name in META]
    optimizer = torch.optim.SGD(params, lr=1.0)
    f, labels = image_feats(batch=3), torch.tensor([0, 1, 2])
    start = [p.detach().clone() for p in params]
    for _ in range(2):
        optimizer.zero_grad()
        sum(head.loss((f, ), samples(labels)).values()).backward()
        optimizer.step()
    for name, p, p0 in zip(META, params, start):
        assert (p - p0).abs().max() > 1e-4, name
    fresh = CoCoOpHead(num_classes=N, reduction=4)
    assert not fresh.is_fitted
    fresh.load_state_dict(head.state_dict())
    assert not fresh.has_zero_shot_weights  # asks for the tower again
    fresh.set_text_tower(encoder.clip, encoder.tokenizer, CLASSES)
    assert fresh.is_fitted and fresh.has_zero_shot_weights
    torch.testing.assert_close(fresh((f, )), head((f, )), rtol=0, atol=0)


def test_recipe_from_the_configs():
    """CoCoOp's vit_b16_c4_ep10_batch1_ctxv1.yaml and Dassl's defaults:
    SGD 0.002, batch 1, 10 epochs, a constant warm-up epoch at 1e-5 then
    cosine, the last epoch; 4 context vectors from 'a photo of a'."""
    cfg = read_schedule('cocoop')
    assert dict(cfg.optim_wrapper.optimizer) == dict(
        type='SGD', lr=0.002, momentum=0.9, weight_decay=5e-4)
    assert cfg.train_cfg.global_batch_size == 1
    assert cfg.train_cfg.max_epochs == 10
    assert cfg.few_shot_cfg.protocol == 'none'
    assert cfg.train_dataloader.sampler.type == 'ViewCyclingSampler'
    lrs = config_lrs(cfg)
    # A warm-up epoch, then cosine over the remaining 9 epochs (Dassl's
    # T_max is 10: within 10% of lr; the first two epochs agree exactly).
    ours = [WARMUP_LR] + [0.002 * (1 + math.cos(math.pi * (e - 1) / 9)) / 2
                          for e in range(1, 10)]
    dassl = [WARMUP_LR] + [0.002 * (1 + math.cos(math.pi * (e - 1) / 10)) / 2
                           for e in range(1, 10)]
    np.testing.assert_allclose(lrs, ours, rtol=1e-9)
    np.testing.assert_allclose(lrs[:2], dassl[:2], rtol=1e-9)
    np.testing.assert_allclose(lrs, dassl, rtol=0, atol=0.1 * 0.002)
    for dataset in DATASETS:
        cfg = Config.fromfile(str(CONFIGS / f'cocoop_{dataset}_16shot.py'))
        head = cfg.model.head
        assert (head.type, head.context_init, head.reduction) == (
            'CoCoOpHead', 'a photo of a', 16)
        assert cfg.dataset_name == dataset
        base = Config.fromfile(
            str(CONFIGS / f'_base_/datasets/{dataset}_fewshot.py'))
        assert head.num_classes == base.num_classes
        assert cfg.train_cfg.max_epochs == 10
        assert cfg.train_cfg.global_batch_size == 1


def test_train_then_test_through_the_tools(tiny_clip, image_folders,
                                           tmp_path):
    run = train_then_test(
        tiny_clip, image_folders, tmp_path, 'cocoop',
        "dict(_delete_=True, type='CoCoOpHead', num_classes=3, "
        "reduction=4, topk=(1, ))")
    assert 'CoCoOpHead fitted on 12 few-shot images x 3' in run['trained']
    assert 'Epoch(val)' not in run['trained']  # protocol 'none'
    first, last = run['states'][1], run['states'][2]
    trained = {f'head.{name}' for name in META}
    assert last['head.meta_up'].shape == (WIDTH, WIDTH // 4)
    for name in last:  # only the context and meta-net train
        assert 'text_tower' not in name
        if name in trained:
            assert not torch.equal(first[name], last[name]), name
        else:
            assert torch.equal(first[name], last[name]), name
    assert top1(run['tested']) == top1(run['trained'])
    assert ' fitted on ' not in run['tested']
