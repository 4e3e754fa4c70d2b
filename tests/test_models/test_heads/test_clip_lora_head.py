"""CLIPLoRAHead: LoRA factors on q/k/v of the tiny open_clip towers (real
encoding), checked against open_clip's own towers with the packed
``in_proj_weight`` changed by hand."""
import copy
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import CONFIGS, python_tool, run_tool, tiny_config
from mmengine.config import Config
from trained_head_checks import DATASETS, samples, top1

from tip_adapter_mm.models import OpenCLIPTextEncoder
from tip_adapter_mm.models.backbones import OpenCLIPVisualBackbone
from tip_adapter_mm.models.heads import CLIPLoRAHead
from tip_adapter_mm.models.heads.clip_lora_head import layer_indices

CLASSES = ('red_apple', 'golden retriever', 'sky')
N = len(CLASSES)
PROMPTS = [f"a photo of a {n.replace('_', ' ')}." for n in CLASSES]
#: The official code's scale alpha / sqrt(r), for r = 2, alpha = 1.
SCALE = 1 / math.sqrt(2)


@pytest.fixture(scope='module')
def towers(tiny_clip):
    """The project's frozen towers (what the classifier hands the head) and
    a separate open_clip model with the same weights (the reference)."""
    visual = OpenCLIPVisualBackbone(**tiny_clip).visual
    text = OpenCLIPTextEncoder(**tiny_clip)
    reference = open_clip.create_model(
        tiny_clip['model_name'], pretrained=tiny_clip['pretrained']).eval()
    return visual, text, reference


def make_head(towers, **kwargs):
    visual, text, _ = towers
    head = CLIPLoRAHead(num_classes=N, **kwargs)
    head.set_image_tower(visual)
    head.set_text_tower(text.clip, text.tokenizer, CLASSES)
    head.set_zero_shot_weights(torch.zeros(32, N))
    head.fit(None, torch.tensor([0, 1, 2, 0]))
    return head


def images(seed=1, batch=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 224, 224, generator=g)


def logits(head, x):
    return head((F.normalize(head.encode_images(x), dim=-1), ))


def randomise(head, seed=2, std=0.3):
    """Random A and B (B is zero after fit), so that the updates act."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.lora.values():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def reference_logits(model, x, prompts=PROMPTS):
    tokens = open_clip.get_tokenizer('TinyCLIP-ViT-test')(prompts)
    with torch.no_grad():
        f = F.normalize(model.encode_image(x), dim=-1)
        t = F.normalize(model.encode_text(tokens), dim=-1)
    return 100.0 * f @ t.t()


def changed_by_hand(reference, head, towers_changed=('image', 'text')):
    """A copy of open_clip's model whose q/k/v rows of each block's packed
    ``in_proj_weight`` (3W, W) get ``SCALE * B @ A`` added."""
    model = copy.deepcopy(reference)
    blocks = dict(image=model.visual.transformer.resblocks,
                  text=model.transformer.resblocks)
    with torch.no_grad():
        for tower in towers_changed:
            for layer, block in enumerate(blocks[tower]):
                w = block.attn.in_proj_weight
                width = w.shape[1]
                for row, proj in enumerate('qkv'):
                    a = head.lora[f'{tower}_{layer}_{proj}_A']
                    b = head.lora[f'{tower}_{layer}_{proj}_B']
                    w[row * width:(row + 1) * width] += SCALE * b @ a
    return model


FACTORS = sorted(f'{t}_0_{p}_{w}' for t in ('image', 'text')
                 for p in 'qkv' for w in 'AB')


def test_factors_shapes_and_initialisation(towers):
    head = make_head(towers)
    assert sorted(head.lora) == FACTORS
    for name, p in head.lora.items():
        if name.endswith('_A'):
            assert p.shape == (2, 32)
            # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
            assert 0 < p.abs().max() <= 1 / math.sqrt(32)
        else:
            assert p.shape == (32, 2) and not p.any()
    assert head.scaling == pytest.approx(SCALE)
    assert head.is_fitted


def test_untrained_head_is_zero_shot_clip(towers):
    _, _, reference = towers
    head = make_head(towers)
    x = images()
    expected = reference_logits(reference, x)
    for train in (False, True):  # dropout acts on the (zero) LoRA only
        head.train(train)
        torch.testing.assert_close(logits(head, x), expected, rtol=0,
                                   atol=1e-4)
    # Not trivially equal: random factors change the logits.
    randomise(head)
    head.eval()
    assert (logits(head, x) - expected).abs().max() > 1e-2


@pytest.mark.parametrize('encoder', ['both', 'vision', 'text'])
def test_factors_equal_changed_in_proj_weights(towers, encoder):
    """Random A, B, no dropout: the head's image features, text features
    and logits equal open_clip's towers with in_proj_weight rows += SCALE
    * B @ A, in the towers ``encoder`` names (the other one untouched)."""
    _, _, reference = towers
    head = make_head(towers, dropout=0.0, encoder=encoder)
    named = dict(both=('image', 'text'), vision=('image', ),
                 text=('text', ))[encoder]
    assert {n.split('_')[0] for n in head.lora} == set(named)
    randomise(head)
    model = changed_by_hand(reference, head, named)
    x = images()
    tokens = open_clip.get_tokenizer('TinyCLIP-ViT-test')(PROMPTS)
    with torch.no_grad():
        torch.testing.assert_close(head.encode_images(x),
                                   model.encode_image(x), rtol=1e-4,
                                   atol=1e-5)
        head.eval()
        torch.testing.assert_close(
            head.text_features(),
            F.normalize(model.encode_text(tokens), dim=-1), rtol=1e-4,
            atol=1e-5)
        # The untouched tower is zero-shot CLIP's.
        if encoder == 'vision':
            torch.testing.assert_close(
                head.text_features(),
                F.normalize(reference.encode_text(tokens), dim=-1),
                rtol=0, atol=1e-5)
        if encoder == 'text':
            torch.testing.assert_close(head.encode_images(x),
                                       reference.encode_image(x), rtol=0,
                                       atol=1e-5)
    head.train()  # no dropout: training mode gives the same logits
    torch.testing.assert_close(logits(head, x),
                               reference_logits(model, x), rtol=1e-4,
                               atol=1e-3)


def test_gradients_reach_exactly_the_lora_factors(towers):
    visual, text, _ = towers
    head = make_head(towers)
    randomise(head)  # with B = 0, A's gradient is zero
    head.train()
    labels = torch.tensor([0, 1, 2, 0])
    losses = head.loss((F.normalize(head.encode_images(images()), dim=-1), ),
                       samples(labels))
    sum(losses.values()).backward()
    trainable = sorted(n for n, p in head.named_parameters()
                       if p.requires_grad)
    assert trainable == [f'lora.{n}' for n in FACTORS]
    for name, p in head.lora.items():
        assert p.grad is not None and p.grad.abs().max() > 0, name
    for module in (visual, text.clip):
        for name, p in module.named_parameters():
            assert p.grad is None and not p.requires_grad, name
    # Dropout 0.25 acts while training only: eval is deterministic.
    head.eval()
    with torch.no_grad():
        a, b = logits(head, images()), logits(head, images())
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_text_features_cached_until_a_factor_changes(towers):
    head = make_head(towers, dropout=0.0)
    randomise(head)
    head.eval()
    with torch.no_grad():
        first = head.text_features()
        assert head.text_features() is first  # kept
        head.lora['text_0_v_B'].add_(0.5)  # an in-place optimizer step
        second = head.text_features()
    assert (second - first).abs().max() > 1e-3
    fresh = head._encode_text()
    torch.testing.assert_close(second, F.normalize(fresh, dim=-1))


def test_trained_head_reloads_from_its_state(towers):
    visual, text, _ = towers
    head = make_head(towers)
    optimizer = torch.optim.AdamW(head.parameters(), lr=0.05)
    head.train()
    labels = torch.tensor([0, 1, 2, 0])
    for _ in range(2):
        optimizer.zero_grad()
        feats = F.normalize(head.encode_images(images()), dim=-1)
        sum(head.loss((feats, ), samples(labels)).values()).backward()
        optimizer.step()
    assert head.lora['text_0_q_B'].abs().max() > 1e-3
    head.eval()
    state = head.state_dict()
    # The towers are not saved: they come from the config's weights.
    assert {k for k in state if k.startswith('lora.')} == {
        f'lora.{n}' for n in FACTORS}
    assert not any('tower' in k or 'clip.' in k or 'resblocks' in k
                   for k in state)
    # A fresh head gets the image tower at construction (the classifier)
    # and the text tower after the checkpoint is loaded.
    fresh = CLIPLoRAHead(num_classes=N)
    fresh.set_image_tower(visual)
    assert not fresh.is_fitted
    fresh.load_state_dict(state)
    assert fresh.is_fitted and not fresh.has_zero_shot_weights
    fresh.set_text_tower(text.clip, text.tokenizer, CLASSES)
    fresh.eval()
    x = images(seed=5)
    with torch.no_grad():
        torch.testing.assert_close(logits(fresh, x), logits(head, x),
                                   rtol=0, atol=0)


def test_reprompted_with_other_classes_keeps_the_factors(towers):
    """Base-to-new / cross-dataset: the factors do not depend on the class
    list; other names are prompted through the same adapted towers."""
    _, text, reference = towers
    head = make_head(towers, dropout=0.0)
    assert head.class_agnostic
    randomise(head)
    before = {n: p.detach().clone() for n, p in head.lora.items()}
    head.forget_classes(2)
    assert head.num_classes == 2 and head.is_fitted
    assert not head.has_zero_shot_weights  # asks for the tower again
    new = ('blue_sky', 'green leaf')
    head.set_text_tower(text.clip, text.tokenizer, new)
    head.set_zero_shot_weights(torch.zeros(32, 2))
    for name, p in head.lora.items():
        assert torch.equal(p, before[name]), name
    model = changed_by_hand(reference, head)
    head.eval()
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(
            logits(head, x),
            reference_logits(model, x, ['a photo of a blue sky.',
                                        'a photo of a green leaf.']),
            rtol=1e-4, atol=1e-3)


def test_positions_follow_the_official_tables():
    # loralib/utils.py, INDEX_POSITIONS_TEXT / _VISION for 12 layers.
    assert layer_indices('all', 12) == list(range(12))
    assert layer_indices('bottom', 12) == [0, 1, 2, 3]
    assert layer_indices('mid', 12) == [4, 5, 6, 7]
    assert layer_indices('up', 12) == [8, 9, 10, 11]
    assert layer_indices('half-up', 12) == [6, 7, 8, 9, 10, 11]
    assert layer_indices('half-bottom', 12) == [0, 1, 2, 3, 4, 5]
    # ViT-L/14's 24 layers.
    assert layer_indices('half-up', 24) == list(range(12, 24))
    assert layer_indices([3, 1, 1], 12) == [1, 3]
    with pytest.raises(ValueError, match='outside'):
        layer_indices([12], 12)
    with pytest.raises(ValueError, match='selects no layer'):
        layer_indices('bottom', 1)
    with pytest.raises(ValueError, match='position must be one of'):
        layer_indices('top', 12)


def test_errors(towers):
    visual, text, _ = towers
    with pytest.raises(ValueError, match="'o'"):
        CLIPLoRAHead(num_classes=N, params=('q', 'o'))
    with pytest.raises(ValueError, match='encoder must be one of'):
        CLIPLoRAHead(num_classes=N, encoder='image')
    with pytest.raises(ValueError, match='one {}'):
        CLIPLoRAHead(num_classes=N, template='a photo')
    head = CLIPLoRAHead(num_classes=N)
    with pytest.raises(ValueError, match='num_classes=3 but got 2'):
        head.set_text_tower(text.clip, text.tokenizer, CLASSES[:2])
    head.set_image_tower(visual)
    with pytest.raises(RuntimeError, match='no text tower'):
        head.fit(None, torch.tensor([0, 1, 2]))
    head.set_text_tower(text.clip, text.tokenizer, CLASSES)
    with pytest.raises(ValueError, match='view_feats=None'):
        head.fit((torch.randn(1, 3, 32), ), torch.tensor([0, 1, 2]))
    # A checkpoint of another rank: torch names the factor; a tower
    # handed over after loading is checked against the factors.
    rank4 = CLIPLoRAHead(num_classes=N, rank=4)
    rank4.set_image_tower(visual)
    with pytest.raises(RuntimeError, match='size mismatch for lora.image'):
        rank4.load_state_dict(head.state_dict())
    rank4 = CLIPLoRAHead(num_classes=N, rank=4)
    rank4.load_state_dict(head.state_dict())
    with pytest.raises(ValueError, match=r'text_0_q_A has shape \(2, 32\)'):
        rank4.set_text_tower(text.clip, text.tokenizer, CLASSES)


def expected_epochs(num_classes: int, shots: int = 16) -> int:
    """The official 500 x K steps of 32 in whole epochs over N x K
    images."""
    steps_per_epoch = -(-num_classes * shots // 32)
    return -(-500 * shots // steps_per_epoch)


def test_recipe_from_the_configs():
    """run_utils.py's defaults and lora.py's optimizer and schedule."""
    cfg = Config.fromfile(str(CONFIGS / '_base_/schedules/clip_lora.py'))
    assert dict(cfg.optim_wrapper.optimizer) == dict(
        type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-2)
    assert cfg.optim_wrapper.constructor == \
        'TrainableParamsOptimWrapperConstructor'
    scheduler = cfg.param_scheduler
    assert (scheduler.type, scheduler.eta_min, scheduler.by_epoch,
            scheduler.convert_to_iter_based) == ('CosineAnnealingLR', 1e-6,
                                                 True, True)
    assert 'end' not in scheduler and 'T_max' not in scheduler
    assert cfg.train_cfg.type == 'FewShotTrainLoop'
    assert cfg.train_cfg.global_batch_size == 32
    assert dict(cfg.train_dataloader.dataset) == dict(type='FewShotDataset')
    assert cfg.train_dataloader.sampler == dict(type='DefaultSampler',
                                                shuffle=True)
    assert (cfg.val_cfg.type, cfg.test_cfg.type) == ('ValLoop', 'TestLoop')
    assert cfg.few_shot_cfg.protocol == 'none'
    crop = cfg.clip_lora_train_pipeline[1]
    assert (crop.type, crop.scale, crop.crop_ratio_range,
            crop.interpolation) == ('RandomResizedCrop', 224, (0.08, 1.0),
                                    'bicubic')
    assert expected_epochs(1000) == 16 and expected_epochs(47) == 334
    for dataset in DATASETS:
        cfg = Config.fromfile(str(CONFIGS / f'clip_lora_{dataset}_16shot.py'))
        base = Config.fromfile(
            str(CONFIGS / f'_base_/datasets/{dataset}_fewshot.py'))
        head = cfg.model.head
        assert (head.type, head.num_classes, head.rank, head.alpha,
                head.dropout, tuple(head.params), head.position,
                head.encoder, head.template, head.clip_logit_scale) == (
                    'CLIPLoRAHead', base.num_classes, 2, 1.0, 0.25,
                    ('q', 'k', 'v'), 'all', 'both', 'a photo of a {}.',
                    100.0)
        assert cfg.model.backbone.model_name == 'ViT-B-16'
        assert cfg.model.text_encoder.model_name == 'ViT-B-16'
        assert cfg.model.backbone.pretrained == 'openai'
        assert cfg.train_cfg.max_epochs == expected_epochs(
            base.num_classes), dataset
        pipeline = cfg.fewshot_dataloader.dataset.dataset.pipeline
        assert pipeline[1].crop_ratio_range == (0.08, 1.0)
        assert cfg.fewshot_dataloader.dataset.num_shots == 16


def test_train_then_test_through_the_tools(tiny_clip, image_folders,
                                           tmp_path):
    config = tiny_config(
        tmp_path / 'clip_lora.py', tiny_clip, image_folders,
        schedule='clip_lora', model_base='clip_lora_vit_b16',
        head='dict(num_classes=3, topk=(1, ))',
        extra=('train_cfg = dict(max_epochs=2, global_batch_size=4)\n'
               'train_dataloader = dict(num_workers=0, '
               'persistent_workers=False)\n'
               'optim_wrapper = dict(optimizer=dict(lr=0.01))\n'))
    work_dir = tmp_path / 'work'
    trained = run_tool(
        python_tool('train.py', str(config), '--work-dir', str(work_dir)))
    assert 'CLIPLoRAHead initialised for 12 few-shot images' in trained
    assert 'Epoch(val)' not in trained  # protocol 'none'
    tested = run_tool(
        python_tool('test.py', str(config), str(work_dir / 'epoch_2.pth'),
                    '--work-dir', str(tmp_path / 'test')))
    states = [
        torch.load(work_dir / f'epoch_{e}.pth',
                   weights_only=False)['state_dict'] for e in (1, 2)
    ]
    lora = {f'head.lora.{n}' for n in FACTORS}
    assert lora <= set(states[1])
    for name in states[1]:  # only the factors train; no tower is saved
        assert not name.startswith('backbone.'), name
        if name in lora:
            if name.endswith('_B'):
                assert states[1][name].abs().max() > 0, name
        else:
            assert torch.equal(states[0][name], states[1][name]), name
    assert not torch.equal(states[0]['head.lora.image_0_q_B'],
                           states[1]['head.lora.image_0_q_B'])
    # The saved last epoch, with the towers rebuilt from the config's
    # weights, gives the reported test accuracy again.
    assert top1(tested) == top1(trained)
    assert 'initialised for' not in tested
