"""VPTHead: learned prompt tokens in an open_clip ViT (a random 3-layer
one), checked against the tower's own blocks run by hand with the tokens
inserted here, and trained through tools/train.py on the tiny model."""
import math

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import CONFIGS, python_tool, run_tool, tiny_config
from mmengine.config import Config
from trained_head_checks import (DATASETS, WARMUP_LR, config_lrs,
                                 read_schedule, samples, top1)

from tip_adapter_mm.models import VPTHead, ZeroShotHead

N, WIDTH, EMBED, LAYERS, PATCH = 3, 32, 24, 3, 16


@pytest.fixture(scope='module')
def visual():
    """A random open_clip ViT tower: 3 layers, width 32, 64 px, patch 16
    (16 patches), 24-d embeddings; frozen as the classifier freezes it."""
    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        embed_dim=EMBED,
        vision_cfg=dict(image_size=64, layers=LAYERS, width=WIDTH,
                        head_width=16, patch_size=PATCH),
        text_cfg=dict(context_length=16, vocab_size=100, width=16, heads=2,
                      layers=1))
    return model.visual.requires_grad_(False).eval()


def images(seed=1, batch=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 64, 64, generator=g)


def make_head(visual, seed=0, **kwargs):
    head = VPTHead(num_classes=N, **kwargs)
    head.set_image_tower(visual)
    g = torch.Generator().manual_seed(5)
    head.set_zero_shot_weights(
        F.normalize(torch.randn(EMBED, N, generator=g), dim=0))
    torch.manual_seed(seed)
    head.fit(None, torch.tensor([0, 1, 2, 0]))
    return head


def by_hand(visual, x_images, prompts, deep):
    """open_clip's ViT written out here: patches, class token, positional
    embedding, ln_pre; the prompt tokens after the class token; the
    tower's own blocks one by one (deep: layer i's tokens replace the
    previous ones before block i); ln_post of the class token, proj."""
    x = visual.conv1(x_images).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.view(1, 1, -1).expand(len(x), 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding
    x = visual.ln_pre(x)
    num = prompts.shape[1]
    lengths = []
    for i, block in enumerate(visual.transformer.resblocks):
        if i == 0:
            x = torch.cat([x[:, :1], prompts[0].expand(len(x), -1, -1),
                           x[:, 1:]], dim=1)
        elif deep and i < len(prompts):
            x = torch.cat([x[:, :1], prompts[i].expand(len(x), -1, -1),
                           x[:, 1 + num:]], dim=1)
        lengths.append(x.shape[1])
        x = block(x)
    return visual.ln_post(x[:, 0]) @ visual.proj, lengths


def test_shallow_equals_the_tower_run_by_hand(visual):
    head = make_head(visual, num_prompts=4, depth='shallow')
    assert head.prompts.shape == (1, 4, WIDTH)
    x = images()
    with torch.no_grad():
        ours = head.encode_images(x)
        expected, lengths = by_hand(visual, x, head.prompts, deep=False)
        plain = visual(x)
    # 1 class + 4 prompts + 16 patches at every block: kept, not added.
    assert lengths == [21] * LAYERS
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    assert (ours - plain).abs().max() > 1e-3  # the prompts act
    # The logits: scale * cos with the zero-shot weights.
    f = F.normalize(ours, dim=-1)
    torch.testing.assert_close(head((f, )),
                               100.0 * f @ head.zero_shot_weights,
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize('prompt_depth', [None, 2])
def test_deep_replaces_the_tokens_at_each_layer(visual, prompt_depth):
    head = make_head(visual, num_prompts=2, depth='deep',
                     prompt_depth=prompt_depth)
    layers = prompt_depth or LAYERS
    assert head.prompts.shape == (layers, 2, WIDTH)
    x = images()
    seen = []
    hooks = [
        block.register_forward_pre_hook(
            lambda module, args: seen.append(args[0].shape[1]))
        for block in visual.transformer.resblocks
    ]
    try:
        with torch.no_grad():
            ours = head.encode_images(x)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == [1 + 2 + 16] * LAYERS  # replaced, never accumulated
    with torch.no_grad():
        expected, _ = by_hand(visual, x, head.prompts, deep=True)
        shallow, _ = by_hand(visual, x, head.prompts, deep=False)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    assert (ours - shallow).abs().max() > 1e-4  # deep is not shallow
    # The last layer's own tokens matter: change them, the output moves
    # (a random change: LayerNorm would remove a constant shift).
    with torch.no_grad():
        head.prompts[layers - 1] += torch.randn(
            2, WIDTH, generator=torch.Generator().manual_seed(3))
        assert (head.encode_images(x) - ours).abs().max() > 1e-4


def test_prompts_at_the_end_give_the_same_class_token(visual):
    """No positional embedding, no mask: the order of the tokens does not
    change the class token (MaPLe's code appends them at the end)."""
    head = make_head(visual, num_prompts=3, depth='shallow')
    x = images()
    p = head.prompts.detach()

    def at_end(i, tokens):
        if i:
            return tokens
        return torch.cat([tokens, p[0].expand(len(tokens), -1, -1)], dim=1)

    from tip_adapter_mm.models.utils.open_clip_towers import encode_image
    with torch.no_grad():
        torch.testing.assert_close(head.encode_images(x),
                                   encode_image(visual, x, at_end),
                                   rtol=0, atol=1e-5)


def test_initialisation_follows_kmnp_vpt(visual):
    head = make_head(visual, num_prompts=16, depth='deep')
    bound = math.sqrt(6.0 / (3 * PATCH * PATCH + WIDTH))
    assert head.init_bound() == pytest.approx(bound)
    p = head.prompts.detach()
    assert p.abs().max() <= bound
    assert p.abs().max() > 0.95 * bound  # uniform, not a narrow normal
    # Uniform on [-b, b]: variance b^2 / 3.
    assert float(p.var()) == pytest.approx(bound**2 / 3, rel=0.1)
    # Seeded by the global RNG: the same seed, the same prompts.
    again = make_head(visual, num_prompts=16, depth='deep')
    assert torch.equal(again.prompts, head.prompts)
    normal = make_head(visual, num_prompts=16, init='normal')
    assert float(normal.prompts.detach().std()) == pytest.approx(0.02, rel=0.1)


def test_gradients_reach_exactly_the_prompts(visual):
    head = make_head(visual, num_prompts=2, depth='deep')
    head.train()
    labels = torch.tensor([0, 1, 2, 0])
    f = F.normalize(head.encode_images(images()), dim=-1)
    losses = head.loss((f, ), samples(labels))
    sum(losses.values()).backward()
    assert [n for n, p in head.named_parameters()] == ['prompts']
    assert head.prompts.grad is not None
    for layer in range(LAYERS):  # every layer's tokens get a gradient
        assert head.prompts.grad[layer].abs().max() > 0
    for name, p in visual.named_parameters():
        assert p.grad is None and not p.requires_grad, name
    expected = F.cross_entropy(head((f, )), labels)
    torch.testing.assert_close(losses['loss'], expected)


def test_dropout_acts_while_training_only(visual):
    head = make_head(visual, num_prompts=4, depth='shallow', dropout=0.5)
    plain = make_head(visual, num_prompts=4, depth='shallow')
    x = images()
    with torch.no_grad():
        head.eval()
        torch.testing.assert_close(head.encode_images(x),
                                   plain.encode_images(x), rtol=0, atol=0)
        head.train()
        torch.manual_seed(3)
        dropped = head.encode_images(x)
    assert (dropped - plain.encode_images(x)).abs().max() > 1e-4


def test_trained_head_reloads_from_its_state(visual):
    head = make_head(visual, num_prompts=4, depth='deep')
    optimizer = torch.optim.SGD([head.prompts], lr=10.0)
    labels = torch.tensor([0, 1, 2, 0])
    start = head.prompts.detach().clone()
    for _ in range(2):
        optimizer.zero_grad()
        f = F.normalize(head.encode_images(images()), dim=-1)
        sum(head.loss((f, ), samples(labels)).values()).backward()
        optimizer.step()
    assert (head.prompts - start).abs().max() > 1e-4
    state = head.state_dict()
    # The zero-shot head's state plus the prompts; no tower.
    assert set(state) - set(ZeroShotHead(N).state_dict()) == {'prompts'}
    fresh = VPTHead(num_classes=N, num_prompts=4, depth='deep')
    assert not fresh.is_fitted
    fresh.set_image_tower(visual)
    fresh.load_state_dict(state)
    assert fresh.is_fitted
    with torch.no_grad():
        x = images(seed=7)
        f = F.normalize(head.encode_images(x), dim=-1)
        g = F.normalize(fresh.encode_images(x), dim=-1)
        torch.testing.assert_close(g, f, rtol=0, atol=0)
        torch.testing.assert_close(fresh((g, )), head((f, )), rtol=0, atol=0)


def test_errors(visual):
    with pytest.raises(ValueError, match='depth must be one of'):
        VPTHead(num_classes=N, depth='middle')
    with pytest.raises(ValueError, match='num_prompts'):
        VPTHead(num_classes=N, num_prompts=0)
    with pytest.raises(ValueError, match='prompt_depth=4 but the image'):
        VPTHead(num_classes=N, prompt_depth=4).set_image_tower(visual)
    head = VPTHead(num_classes=N)
    with pytest.raises(RuntimeError, match='no image tower'):
        head.fit(None, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match='fit\\(None, labels\\)'):
        head.fit((torch.zeros(1, 2, EMBED), ), torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match='not fitted'):
        head.set_image_tower(visual)
        head.encode_images(images())
    resnet = open_clip.model.CLIP(
        embed_dim=16, vision_cfg=dict(image_size=64, layers=(1, 1, 1, 1),
                                      width=8, head_width=8),
        text_cfg=dict(context_length=8, vocab_size=50, width=8, heads=1,
                      layers=1)).visual
    with pytest.raises(ValueError, match='ViT'):
        VPTHead(num_classes=N).set_image_tower(resnet)


def test_recipe_from_the_configs():
    """MaPLe's code's VPT baseline (vit_b16_c2_ep5_batch4_4.yaml): deep,
    8 tokens in all layers; SGD lr 0.0025, batch 4, 5 epochs, warm-up
    epoch at 1e-5, cosine; images encoded at every step."""
    cfg = read_schedule('vpt')
    assert dict(cfg.optim_wrapper.optimizer) == dict(
        type='SGD', lr=0.0025, momentum=0.9, weight_decay=5e-4)
    assert cfg.optim_wrapper.constructor == \
        'TrainableParamsOptimWrapperConstructor'
    assert (cfg.train_cfg.type, cfg.train_cfg.max_epochs,
            cfg.train_cfg.global_batch_size) == ('FewShotTrainLoop', 5, 4)
    lrs = config_lrs(cfg)
    cosine = [0.0025 * (1 + math.cos(math.pi * e / 4)) / 2
              for e in range(4)]
    np.testing.assert_allclose(lrs, [WARMUP_LR] + cosine, rtol=1e-9)
    assert cfg.train_dataloader.dataset == dict(type='FewShotDataset')
    assert cfg.train_dataloader.sampler == dict(type='DefaultSampler',
                                                shuffle=True)
    assert (cfg.val_cfg.type, cfg.test_cfg.type) == ('ValLoop', 'TestLoop')
    assert cfg.few_shot_cfg.protocol == 'none'
    for dataset in DATASETS:
        cfg = Config.fromfile(str(CONFIGS / f'vpt_{dataset}_16shot.py'))
        head = cfg.model.head
        assert (head.type, head.num_prompts, head.depth, head.prompt_depth,
                head.init) == ('VPTHead', 8, 'deep', None, 'uniform')
        assert cfg.model.backbone.model_name == 'ViT-B-16'
        assert cfg.model.text_encoder.model_name == 'ViT-B-16'
        assert cfg.dataset_name == dataset
        base = Config.fromfile(
            str(CONFIGS / f'_base_/datasets/{dataset}_fewshot.py'))
        assert head.num_classes == base.num_classes
        assert cfg.model.templates == base.templates  # hand-crafted
        assert cfg.train_cfg.max_epochs == 5


def test_train_then_test_through_the_tools(tiny_clip, image_folders,
                                           tmp_path):
    """tools/train.py (2 epochs, batch 4, the images encoded by the head
    at every step) then tools/test.py on the last checkpoint, with the
    tiny ViT."""
    config = tiny_config(
        tmp_path / 'vpt.py', tiny_clip, image_folders, schedule='vpt',
        model_base='vpt_vit_b16',
        head="dict(num_classes=3, num_prompts=2, topk=(1, ))",
        extra=('train_cfg = dict(max_epochs=2, global_batch_size=4)\n'
               'train_dataloader = dict(num_workers=0, '
               'persistent_workers=False)\n'
               'optim_wrapper = dict(optimizer=dict(lr=0.5))\n'
               'param_scheduler = None\n'))
    work_dir = tmp_path / 'work'
    trained = run_tool(
        python_tool('train.py', str(config), '--work-dir', str(work_dir)))
    assert 'VPTHead initialised for 12 few-shot images' in trained
    assert 'Epoch(val)' not in trained  # protocol 'none'
    tested = run_tool(
        python_tool('test.py', str(config), str(work_dir / 'epoch_2.pth'),
                    '--work-dir', str(tmp_path / 'test')))
    first, last = (torch.load(work_dir / f'epoch_{e}.pth',
                              weights_only=False)['state_dict']
                   for e in (1, 2))
    assert last['head.prompts'].shape == (1, 2, 32)  # 1 layer, 2 tokens
    assert not torch.equal(first['head.prompts'], last['head.prompts'])
    for name in last:  # nothing else trains; no tower in the checkpoint
        assert 'visual' not in name and 'image_tower' not in name, name
        if name != 'head.prompts':
            assert torch.equal(first[name], last[name]), name
    assert top1(tested) == top1(trained)
    assert ' initialised for ' not in tested
