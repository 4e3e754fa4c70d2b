"""MaPLeHead: coupled prompts in both towers of a random 3-layer open_clip
model, checked against open_clip's own blocks run by hand with the prompts
spliced in here; CoOp and zero-shot CLIP where MaPLe reduces to them."""
import math

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import CONFIGS, python_tool, run_tool, tiny_config
from mmengine.config import Config
from test_vpt_head import images
from trained_head_checks import (DATASETS, WARMUP_LR, config_lrs,
                                 read_schedule, samples, top1)

from tip_adapter_mm.models import CoOpHead, MaPLeHead, ZeroShotHead

CLASSES = ('red_apple', 'golden retriever', 'sky')
N, EMBED, TEXT, VISION, LAYERS = 3, 24, 16, 32, 3
SOS, EOS = 49406, 49407
LEARNED = ['ctx', 'deep_ctx', 'proj_weight', 'proj_bias']


@pytest.fixture(scope='module')
def clip():
    """A random open_clip CLIP: 3-layer ViT (width 32, 64 px, patch 16)
    and 3-layer text tower (width 16), 24-d embeddings; frozen."""
    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        embed_dim=EMBED,
        vision_cfg=dict(image_size=64, layers=LAYERS, width=VISION,
                        head_width=16, patch_size=16),
        text_cfg=dict(context_length=77, vocab_size=49408, width=TEXT,
                      heads=2, layers=LAYERS))
    return model.requires_grad_(False).eval()


@pytest.fixture(scope='module')
def tokenizer():
    return open_clip.get_tokenizer('ViT-B-32')


def make_head(clip, tokenizer, seed=0, cls=MaPLeHead, **kwargs):
    head = cls(num_classes=N, **kwargs)
    head.set_text_tower(clip, tokenizer, CLASSES)
    head.set_zero_shot_weights(torch.zeros(EMBED, N))
    torch.manual_seed(seed)
    if cls is MaPLeHead:
        head.set_image_tower(clip.visual)
        head.fit(None, torch.tensor([0, 1, 2, 0]))
    else:
        head.fit((torch.randn(2, 4, EMBED), ), torch.tensor([0, 1, 2, 0]))
    return head


def text_by_hand(clip, tokenizer, head):
    """The text features ``(N, C)`` written out here: token ids of
    '[SOS] X X of a <name>. [EOS]', the embeddings with ``ctx`` at
    positions 1..M, the positional embedding, the tower's own blocks with
    positions 1..M replaced by ``deep_ctx[j - 1]`` before block j < J,
    ln_final, the EOT token, text_projection."""
    m = head.num_context
    rows = []
    for name in CLASSES:
        words = tokenizer.encode(f"of a {name.replace('_', ' ')}.")
        row = torch.zeros(77, dtype=torch.long)
        seq = [SOS] + [1] * m + words + [EOS]
        row[:len(seq)] = torch.tensor(seq)
        rows.append(row)
    ids = torch.stack(rows)
    x = clip.token_embedding(ids)
    x[:, 1:1 + m] = head.ctx.detach()
    x = x + clip.positional_embedding
    for j, block in enumerate(clip.transformer.resblocks):
        if 1 <= j < head.prompt_depth:
            x = x.clone()
            x[:, 1:1 + m] = head.deep_ctx[j - 1].detach()
        x = block(x, attn_mask=clip.attn_mask)
    x = clip.ln_final(x)
    eot = ids.argmax(dim=-1)
    assert (ids[torch.arange(N), eot] == EOS).all()
    return x[torch.arange(N), eot] @ clip.text_projection


def images_by_hand(visual, x_images, vision_prompts):
    """open_clip's ViT written out here with MaPLe's image prompts: layer
    0's appended at the end before ln_pre (as the official code), the last
    M tokens replaced before each block j < J."""
    m = vision_prompts.shape[1]
    x = visual.conv1(x_images).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.view(1, 1, -1).expand(len(x), 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding
    x = torch.cat([x, vision_prompts[0].expand(len(x), -1, -1)], dim=1)
    x = visual.ln_pre(x)
    for j, block in enumerate(visual.transformer.resblocks):
        if 1 <= j < len(vision_prompts):
            x = torch.cat([x[:, :-m],
                           vision_prompts[j].expand(len(x), -1, -1)], dim=1)
        x = block(x)
    return visual.ln_post(x[:, 0]) @ visual.proj


def test_shapes_and_coupling(clip, tokenizer):
    head = make_head(clip, tokenizer, prompt_depth=3)
    assert head.ctx.shape == (2, TEXT)
    assert head.deep_ctx.shape == (2, 2, TEXT)
    assert head.proj_weight.shape == (3, VISION, TEXT)
    assert head.proj_bias.shape == (3, VISION)
    # ctx starts from the words 'a photo'.
    words = clip.token_embedding(
        torch.tensor(tokenizer.encode('a photo')))
    torch.testing.assert_close(head.ctx.detach(), words, rtol=0, atol=0)
    assert float(head.deep_ctx.detach().std()) == pytest.approx(0.02,
                                                                rel=0.5)
    # F_1 .. F_{J-1} start as one clone (the official _get_clones).
    assert torch.equal(head.proj_weight[1], head.proj_weight[2])
    assert not torch.equal(head.proj_weight[0], head.proj_weight[1])
    bound = 1 / math.sqrt(TEXT)  # nn.Linear's default initialisation
    assert head.proj_weight.abs().max() <= bound
    # The image prompts are the coupling layers of the text prompts.
    text = torch.cat([head.ctx.unsqueeze(0), head.deep_ctx])
    expected = torch.stack([
        F.linear(text[j], head.proj_weight[j], head.proj_bias[j])
        for j in range(3)
    ])
    torch.testing.assert_close(head.vision_prompts(), expected, rtol=0,
                               atol=1e-6)


@pytest.mark.parametrize('depth', [2, 3])
def test_text_and_images_equal_the_towers_run_by_hand(clip, tokenizer,
                                                      depth):
    head = make_head(clip, tokenizer, prompt_depth=depth)
    with torch.no_grad():
        text = head.raw_text_features()
        torch.testing.assert_close(text,
                                   text_by_hand(clip, tokenizer, head),
                                   rtol=0, atol=1e-5)
        x = images()
        feats = head.encode_images(x)
        torch.testing.assert_close(
            feats, images_by_hand(clip.visual, x, head.vision_prompts()),
            rtol=0, atol=1e-5)
        plain = clip.visual(x)
    assert (feats - plain).abs().max() > 1e-3
    f = F.normalize(feats, dim=-1)
    torch.testing.assert_close(
        head((f, )), 100.0 * f @ F.normalize(text, dim=-1).t(), rtol=0,
        atol=1e-5)


def test_deep_prompts_replace_rather_than_accumulate(clip, tokenizer):
    head = make_head(clip, tokenizer, prompt_depth=3)
    seen = []
    hooks = [
        block.register_forward_pre_hook(
            lambda module, args: seen.append(tuple(args[0].shape[:2])))
        for block in clip.visual.transformer.resblocks
    ]
    try:
        with torch.no_grad():
            head.encode_images(images(batch=2))
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == [(2, 1 + 16 + 2)] * LAYERS


def test_depth_one_is_coop_and_untrained_is_zero_shot(clip, tokenizer):
    """J = 1 with a random context: CoOp's text features with the same
    context; J = 1 from 'a photo of a': zero-shot CLIP's 'a photo of a
    <name>.'."""
    maple = make_head(clip, tokenizer, prompt_depth=1, context_init=None,
                      num_context=4)
    coop = make_head(clip, tokenizer, cls=CoOpHead, num_context=4)
    with torch.no_grad():
        coop.ctx.copy_(maple.ctx)
        torch.testing.assert_close(maple.text_features(),
                                   coop.text_features(), rtol=0, atol=0)
    head = make_head(clip, tokenizer, prompt_depth=1)
    prompts = [f"a photo of a {n.replace('_', ' ')}." for n in CLASSES]
    with torch.no_grad():
        zero_shot = F.normalize(clip.encode_text(tokenizer(prompts)),
                                dim=-1)
        torch.testing.assert_close(head.text_features(), zero_shot, rtol=0,
                                   atol=1e-5)


def test_gradients_reach_exactly_the_prompts_and_couplings(clip, tokenizer):
    head = make_head(clip, tokenizer, prompt_depth=3)
    head.train()
    labels = torch.tensor([0, 1, 2, 0])
    f = F.normalize(head.encode_images(images()), dim=-1)
    losses = head.loss((f, ), samples(labels))
    sum(losses.values()).backward()
    assert [n for n, _ in head.named_parameters()] == LEARNED
    for name in LEARNED:
        grad = getattr(head, name).grad
        assert grad is not None and grad.abs().max() > 0, name
    for j in range(3):  # every layer's prompts and coupling layer
        assert head.deep_ctx.grad[min(j, 1)].abs().max() > 0
        assert head.proj_weight.grad[j].abs().max() > 0, j
    for name, p in clip.named_parameters():
        assert p.grad is None and not p.requires_grad, name
    torch.testing.assert_close(losses['loss'],
                               F.cross_entropy(head((f, )), labels))


def test_trained_head_reloads_from_its_state(clip, tokenizer):
    head = make_head(clip, tokenizer, prompt_depth=3)
    params = [getattr(head, name) for name in LEARNED]
    optimizer = torch.optim.SGD(params, lr=1.0)
    labels = torch.tensor([0, 1, 2, 0])
    start = [p.detach().clone() for p in params]
    for _ in range(2):
        optimizer.zero_grad()
        f = F.normalize(head.encode_images(images()), dim=-1)
        sum(head.loss((f, ), samples(labels)).values()).backward()
        optimizer.step()
    for name, p, p0 in zip(LEARNED, params, start):
        assert (p - p0).abs().max() > 1e-5, name
    state = head.state_dict()
    assert set(state) - set(ZeroShotHead(N).state_dict()) == set(LEARNED)
    fresh = MaPLeHead(num_classes=N, prompt_depth=3)
    fresh.set_image_tower(clip.visual)
    fresh.load_state_dict(state)
    assert not fresh.has_zero_shot_weights  # asks for the text tower
    fresh.set_text_tower(clip, tokenizer, CLASSES)
    assert fresh.is_fitted and fresh.has_zero_shot_weights
    with torch.no_grad():
        x = images(seed=7)
        f = F.normalize(head.encode_images(x), dim=-1)
        g = F.normalize(fresh.encode_images(x), dim=-1)
        torch.testing.assert_close(g, f, rtol=0, atol=0)
        torch.testing.assert_close(fresh((g, )), head((f, )), rtol=0, atol=0)


def test_reprompted_with_other_names_keeps_the_prompts(clip, tokenizer):
    """Class-agnostic: forget the classes, take 2 new names; the learned
    tensors stay and the text features are those of the new names."""
    head = make_head(clip, tokenizer, prompt_depth=3)
    learned = {n: getattr(head, n).detach().clone() for n in LEARNED}
    x = images()
    with torch.no_grad():
        feats = head.encode_images(x)
    assert head.class_agnostic
    head.forget_classes(2)
    assert not head.has_zero_shot_weights
    names = ('blue_sky', 'sky')
    head.set_text_tower(clip, tokenizer, names)
    head.set_zero_shot_weights(torch.zeros(EMBED, 2))
    for name in LEARNED:
        assert torch.equal(getattr(head, name), learned[name]), name
    reference = make_head(clip, tokenizer, prompt_depth=3)
    with torch.no_grad():
        torch.testing.assert_close(head.encode_images(x), feats, rtol=0,
                                   atol=0)
        text = head.text_features()
        assert text.shape == (2, EMBED)
        # The second new name is the third old one: the same features.
        torch.testing.assert_close(text[1], reference.text_features()[2],
                                   rtol=0, atol=1e-6)


def test_errors(clip, tokenizer):
    with pytest.raises(ValueError, match='prompt_depth must be >= 1'):
        MaPLeHead(num_classes=N, prompt_depth=0)
    with pytest.raises(ValueError, match='prompt_depth=9 but the image'):
        MaPLeHead(num_classes=N).set_image_tower(clip.visual)
    with pytest.raises(ValueError, match='prompt_depth=9 but the text'):
        MaPLeHead(num_classes=N).set_text_tower(clip, tokenizer, CLASSES)
    with pytest.raises(ValueError, match='num_context=5 must be'):
        MaPLeHead(num_classes=N, num_context=5,
                  prompt_depth=2).set_text_tower(
            clip, tokenizer, CLASSES)
    with pytest.raises(ValueError, match='num_classes=3 but got 2'):
        MaPLeHead(num_classes=N).set_text_tower(clip, tokenizer,
                                                CLASSES[:2])
    head = MaPLeHead(num_classes=N, prompt_depth=2)
    head.set_image_tower(clip.visual)
    with pytest.raises(RuntimeError, match='no text tower'):
        head.fit(None, torch.tensor([0, 1]))
    head.set_text_tower(clip, tokenizer, CLASSES)
    with pytest.raises(ValueError, match='fit\\(None, labels\\)'):
        head.fit((torch.zeros(1, 2, EMBED), ), torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match='not fitted'):
        head.encode_images(images())


def test_recipe_from_the_configs():
    """vit_b16_c2_ep5_batch4_2ctx.yaml: 2 tokens from 'a photo of a',
    depth 9; SGD lr 0.0035, batch 4, 5 epochs, a warm-up epoch at 1e-5,
    cosine."""
    cfg = read_schedule('maple')
    assert dict(cfg.optim_wrapper.optimizer) == dict(
        type='SGD', lr=0.0035, momentum=0.9, weight_decay=5e-4)
    assert (cfg.train_cfg.max_epochs, cfg.train_cfg.global_batch_size) == (
        5, 4)
    cosine = [0.0035 * (1 + math.cos(math.pi * e / 4)) / 2
              for e in range(4)]
    np.testing.assert_allclose(config_lrs(cfg), [WARMUP_LR] + cosine,
                               rtol=1e-9)
    assert cfg.train_dataloader.dataset == dict(type='FewShotDataset')
    assert (cfg.val_cfg.type, cfg.test_cfg.type) == ('ValLoop', 'TestLoop')
    assert cfg.few_shot_cfg.protocol == 'none'
    for dataset in DATASETS:
        cfg = Config.fromfile(str(CONFIGS / f'maple_{dataset}_16shot.py'))
        head = cfg.model.head
        assert (head.type, head.num_context, head.context_init,
                head.prompt_depth) == ('MaPLeHead', 2, 'a photo of a', 9)
        assert cfg.model.backbone.model_name == 'ViT-B-16'
        assert cfg.model.text_encoder.model_name == 'ViT-B-16'
        assert cfg.dataset_name == dataset
        base = Config.fromfile(
            str(CONFIGS / f'_base_/datasets/{dataset}_fewshot.py'))
        assert head.num_classes == base.num_classes
        assert cfg.model.templates == base.templates  # hand-crafted


def test_train_then_test_through_the_tools(tiny_clip, image_folders,
                                           tmp_path):
    """tools/train.py (2 epochs, batch 4) then tools/test.py on the last
    checkpoint, with the tiny 1-layer model (J = 1)."""
    config = tiny_config(
        tmp_path / 'maple.py', tiny_clip, image_folders, schedule='maple',
        model_base='maple_vit_b16',
        head="dict(num_classes=3, prompt_depth=1, topk=(1, ))",
        extra=('train_cfg = dict(max_epochs=2, global_batch_size=4)\n'
               'train_dataloader = dict(num_workers=0, '
               'persistent_workers=False)\n'
               'optim_wrapper = dict(optimizer=dict(lr=0.5))\n'
               'param_scheduler = None\n'))
    work_dir = tmp_path / 'work'
    trained = run_tool(
        python_tool('train.py', str(config), '--work-dir', str(work_dir)))
    assert 'MaPLeHead initialised for 12 few-shot images' in trained
    tested = run_tool(
        python_tool('test.py', str(config), str(work_dir / 'epoch_2.pth'),
                    '--work-dir', str(tmp_path / 'test')))
    first, last = (torch.load(work_dir / f'epoch_{e}.pth',
                              weights_only=False)['state_dict']
                   for e in (1, 2))
    assert last['head.ctx'].shape == (2, 32)
    assert last['head.proj_weight'].shape == (1, 32, 32)
    for name in last:  # only the prompts and couplings train
        assert 'tower' not in name and 'visual' not in name, name
        moved = not torch.equal(first[name], last[name])
        assert moved == (name[len('head.'):] in LEARNED[:1] + LEARNED[2:]), \
            name
    assert top1(tested) == top1(trained)
