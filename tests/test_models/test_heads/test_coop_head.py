"""CoOpHead: learned context vectors in the tiny open_clip text tower (real
text encoding), checked against open_clip's own ``encode_text`` with the
context spliced into its token embeddings by hand."""
import pytest
import torch
import torch.nn.functional as F
from conftest import CONFIGS
from mmengine.config import Config
from trained_head_checks import (DATASETS, check_dassl_schedule,
                                 read_schedule, samples, top1,
                                 train_then_test)

from tip_adapter_mm.models import CoOpHead, OpenCLIPTextEncoder

CLASSES = ('red_apple', 'golden retriever', 'sky')
N = len(CLASSES)
SOS, EOS = 49406, 49407


@pytest.fixture(scope='module')
def encoder(tiny_clip):
    return OpenCLIPTextEncoder(**tiny_clip)


def make_head(encoder, seed=0, **kwargs):
    head = CoOpHead(num_classes=N, **kwargs)
    head.set_text_tower(encoder.clip, encoder.tokenizer, CLASSES)
    head.set_zero_shot_weights(torch.zeros(32, N))
    torch.manual_seed(seed)
    width = 32
    views = torch.randn(2, 4, width)
    head.fit((views, ), torch.tensor([0, 1, 2, 0]))
    return head


def image_feats(seed=1, batch=5):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(batch, 32, generator=g), dim=-1)


def hand_prompts(encoder, ctx, position):
    """Token ids ``(N, L)`` of each class's prompt and its embeddings ``(N,
    L, D)`` with the context spliced in, built here position by position;
    also the context's and the name's positions."""
    clip, tok = encoder.clip, encoder.tokenizer
    m = ctx.shape[-2]
    ids, embeds, where = [], [], []
    for c, name in enumerate(CLASSES):
        words = tok.encode(name.replace('_', ' '))
        dot = tok.encode('.')
        filler = [0] * m  # placeholder ids, replaced below
        if position == 'end':
            seq = [SOS] + filler + words + dot + [EOS]
            ctx_pos = list(range(1, 1 + m))
            name_pos = list(range(1 + m, 1 + m + len(words)))
        elif position == 'front':
            seq = [SOS] + words + filler + dot + [EOS]
            name_pos = list(range(1, 1 + len(words)))
            ctx_pos = list(range(1 + len(words), 1 + len(words) + m))
        else:  # middle
            half = m // 2
            seq = ([SOS] + filler[:half] + words + filler[half:] + dot +
                   [EOS])
            ctx_pos = (list(range(1, 1 + half)) + list(
                range(1 + half + len(words), 1 + m + len(words))))
            name_pos = list(range(1 + half, 1 + half + len(words)))
        row = torch.zeros(77, dtype=torch.long)
        row[:len(seq)] = torch.tensor(seq)
        # The placeholders carry the EOS-free id 1 so argmax stays at EOS.
        row[ctx_pos] = 1
        emb = clip.token_embedding(row).detach().clone()
        context = ctx if ctx.dim() == 2 else ctx[c]
        emb[ctx_pos] = context
        ids.append(row)
        embeds.append(emb)
        where.append((ctx_pos, name_pos, len(seq) - 1))
    return torch.stack(ids), torch.stack(embeds), where


def open_clip_text(encoder, ids, embeds):
    """open_clip's own ``encode_text`` of ``ids`` with its token embeddings
    replaced by ``embeds`` (a forward hook), normalised."""
    clip = encoder.clip
    handle = clip.token_embedding.register_forward_hook(
        lambda module, args, out: embeds)
    try:
        return F.normalize(clip.encode_text(ids), dim=-1)
    finally:
        handle.remove()


@pytest.mark.parametrize('position,class_specific',
                         [('end', False), ('middle', False),
                          ('front', False), ('end', True)])
def test_prompts_and_logits_match_open_clip(encoder, position,
                                            class_specific):
    head = make_head(encoder, num_context=4,
                     class_token_position=position,
                     class_specific=class_specific)
    ctx = head.ctx.detach()
    assert ctx.shape == ((N, 4, 32) if class_specific else (4, 32))
    ids, embeds, where = hand_prompts(encoder, ctx, position)
    tower = head.text_tower
    built = tower.prompt_embeddings(head.ctx).detach()
    torch.testing.assert_close(built, embeds, rtol=0, atol=0)
    # The name's token ids and the EOT position (argmax of the ids).
    for c, (ctx_pos, name_pos, eot) in enumerate(where):
        assert int(tower.tokens[c].argmax()) == eot
        assert tower.tokens[c, eot] == EOS and tower.tokens[c, 0] == SOS
        assert tower.tokens[c].tolist()[eot + 1:] == [0] * (76 - eot)
    text = open_clip_text(encoder, ids, embeds)
    f = image_feats()
    expected = 100.0 * f @ text.t()
    torch.testing.assert_close(head((f, )), expected, rtol=0, atol=1e-5)
    # Not trivially equal: another context gives other logits (a random
    # change: LayerNorm would remove a constant shift).
    shifted = ctx + torch.randn(ctx.shape, generator=torch.Generator()
                                .manual_seed(3))
    other = open_clip_text(encoder, ids,
                           hand_prompts(encoder, shifted, position)[1])
    assert (100.0 * f @ other.t() - expected).abs().max() > 1e-3


def test_gradients_reach_exactly_the_context(encoder):
    head = make_head(encoder, num_context=3)
    f, labels = image_feats(batch=6), torch.tensor([0, 1, 2, 0, 1, 2])
    losses = head.loss((f, ), samples(labels))
    sum(losses.values()).backward()
    assert [n for n, p in head.named_parameters() if p.requires_grad] == [
        'ctx'
    ]
    assert head.ctx.grad is not None and head.ctx.grad.abs().max() > 0
    for name, p in head.text_tower.named_parameters():
        assert p.grad is None and not p.requires_grad, name
    # The loss is cross-entropy on the logits.
    expected = F.cross_entropy(head((f, )), labels)
    torch.testing.assert_close(losses['loss'], expected)


def test_initialised_from_words_is_zero_shot_clip(encoder):
    head = make_head(encoder, context_init='a photo of a')
    assert head.ctx.shape == (4, 32)
    prompts = [f"a photo of a {n.replace('_', ' ')}." for n in CLASSES]
    with torch.no_grad():
        text = F.normalize(
            encoder.clip.encode_text(encoder.tokenizer(prompts)), dim=-1)
    f = image_feats()
    torch.testing.assert_close(head((f, )), 100.0 * f @ text.t(), rtol=0,
                               atol=1e-5)
    # Class-specific: every class starts from the same words.
    csc = make_head(encoder, context_init='a photo of a',
                    class_specific=True)
    assert csc.ctx.shape == (N, 4, 32)
    torch.testing.assert_close(csc((f, )), head((f, )), rtol=0, atol=1e-5)


def test_trained_head_reloads_from_its_state(encoder):
    head = make_head(encoder, num_context=4)
    optimizer = torch.optim.SGD([head.ctx], lr=1.0)
    f, labels = image_feats(batch=6), torch.tensor([0, 1, 2, 0, 1, 2])
    start = head.ctx.detach().clone()
    for _ in range(3):
        optimizer.zero_grad()
        sum(head.loss((f, ), samples(labels)).values()).backward()
        optimizer.step()
    assert (head.ctx - start).abs().max() > 1e-3
    state = head.state_dict()
    # The tower is not saved: it comes from the config's weights.
    assert set(state) == {'is_searched', 'clip_logit_scale',
                          'zero_shot_weights', 'ctx', 'class_names_digest'}
    fresh = CoOpHead(num_classes=N, num_context=4)
    assert not fresh.is_fitted and not fresh.has_zero_shot_weights
    fresh.load_state_dict(state)
    assert not fresh.has_zero_shot_weights  # asks for the tower again
    fresh.set_text_tower(encoder.clip, encoder.tokenizer, CLASSES)
    assert fresh.is_fitted and fresh.has_zero_shot_weights
    torch.testing.assert_close(fresh((f, )), head((f, )), rtol=0, atol=0)


def test_errors(encoder):
    with pytest.raises(ValueError, match='class_token_position'):
        CoOpHead(num_classes=N, class_token_position='back')
    head = CoOpHead(num_classes=N)
    with pytest.raises(ValueError, match='num_classes=3 but got 2'):
        head.set_text_tower(encoder.clip, encoder.tokenizer, CLASSES[:2])
    with pytest.raises(RuntimeError, match='no text tower'):
        head.fit((torch.randn(2, 3, 32), ), torch.tensor([0, 1, 2]))
    head.set_text_tower(encoder.clip, encoder.tokenizer, CLASSES)
    with pytest.raises(ValueError, match='32-d features'):
        head.fit((torch.randn(2, 3, 16), ), torch.tensor([0, 1, 2]))


def test_recipe_from_the_configs():
    """The official recipe: CoOp's rn50.yaml (ImageNet: rn50_ep50.yaml),
    16 context vectors at the end, shared; Dassl's defaults."""
    cfg = read_schedule('coop')
    assert dict(cfg.optim_wrapper.optimizer) == dict(
        type='SGD', lr=0.002, momentum=0.9, weight_decay=5e-4)
    assert cfg.optim_wrapper.constructor == \
        'TrainableParamsOptimWrapperConstructor'
    assert cfg.train_cfg.type == 'FewShotTrainLoop'
    assert cfg.train_cfg.global_batch_size == 32
    check_dassl_schedule(cfg, lr=0.002, epochs=200)
    assert cfg.train_dataloader.sampler.type == 'ViewCyclingSampler'
    assert cfg.train_dataloader.dataset.type == 'CachedViewsDataset'
    assert cfg.few_shot_cfg.protocol == 'none'
    for dataset in DATASETS:
        cfg = Config.fromfile(str(CONFIGS / f'coop_{dataset}_16shot.py'))
        head = cfg.model.head
        assert (head.type, head.num_context, head.context_init,
                head.class_specific, head.class_token_position) == (
                    'CoOpHead', 16, None, False, 'end')
        assert cfg.dataset_name == dataset
        base = Config.fromfile(
            str(CONFIGS / f'_base_/datasets/{dataset}_fewshot.py'))
        assert head.num_classes == base.num_classes
        check_dassl_schedule(cfg, lr=0.002,
                             epochs=50 if dataset == 'imagenet' else 200)
        assert cfg.train_cfg.global_batch_size == 32


def test_train_then_test_through_the_tools(tiny_clip, image_folders,
                                           tmp_path):
    run = train_then_test(
        tiny_clip, image_folders, tmp_path, 'coop',
        "dict(_delete_=True, type='CoOpHead', num_classes=3, num_context=4, "
        'topk=(1, ))')
    assert 'CoOpHead fitted on 12 few-shot images x 3' in run['trained']
    assert 'Epoch(val)' not in run['trained']  # protocol 'none'
    first, last = run['states'][1], run['states'][2]
    assert last['head.ctx'].shape == (4, 32)
    assert not torch.equal(first['head.ctx'], last['head.ctx'])
    for name in last:  # nothing else trains; no tower in the checkpoint
        assert 'text_tower' not in name
        if name != 'head.ctx':
            assert torch.equal(first[name], last[name]), name
    # The saved last epoch, with the tower rebuilt from the config's
    # weights, gives the reported test accuracy again.
    assert top1(run['tested']) == top1(run['trained'])
    assert ' fitted on ' not in run['tested']
