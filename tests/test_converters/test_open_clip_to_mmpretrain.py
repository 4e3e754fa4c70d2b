"""open_clip / OpenAI CLIP visual towers -> MMPretrain modules
(tip_adapter_mm.converters.open_clip_to_mmpretrain, and its command line
tools/model_converters/open_clip_to_mmpretrain.py) and check_pretrained."""
import importlib.util
import json
from pathlib import Path

import open_clip
import pytest
import torch
from conftest import REPO, python_tool, run_tool
from mmpretrain.registry import MODELS

from tip_adapter_mm.converters.open_clip_to_mmpretrain import (
    convert_visual_tower, load_clip_state_dict, mmpretrain_tower_cfg,
    tower_options_from_model_config)
from tip_adapter_mm.models.utils import check_pretrained

TOOL = 'model_converters/open_clip_to_mmpretrain.py'
TEXT_CFG = {
    'context_length': 8,
    'vocab_size': 64,
    'width': 32,
    'heads': 2,
    'layers': 1
}
VIT_CFG = {
    'image_size': 32,
    'patch_size': 8,
    'width': 64,
    'layers': 2,
    'head_width': 32
}
RN_CFG = {
    'image_size': 64,
    'layers': [3, 4, 6, 3],
    'width': 8,
    'head_width': 32
}


def make_clip(root, name, vision_cfg, quick_gelu=False, seed=0):
    """Register a tiny open_clip architecture, build it with random weights
    (LayerNorm / BatchNorm parameters and statistics randomised too, so
    swapped norms can't go unnoticed) and save its state dict."""
    config = {
        'embed_dim': 48,
        'quick_gelu': quick_gelu,
        'vision_cfg': vision_cfg,
        'text_cfg': TEXT_CFG
    }
    config_file = root / f'{name}.json'
    config_file.write_text(json.dumps(config))
    open_clip.add_model_config(str(config_file))
    torch.manual_seed(seed)
    model = open_clip.create_model(name).eval()
    with torch.no_grad():
        for key, value in model.visual.state_dict().items():
            if not value.is_floating_point():
                continue
            if key.endswith('running_var'):
                value.uniform_(0.5, 1.5)
            elif 'bn' in key or 'downsample.1' in key or 'ln' in key:
                value.add_(0.1 * torch.randn_like(value))
    checkpoint = root / f'{name}.pt'
    torch.save(model.state_dict(), checkpoint)
    return dict(
        model=model, config=str(config_file), checkpoint=str(checkpoint))


def convert(src, dst, *args):
    output = run_tool(python_tool(TOOL, str(src), str(dst), *args))
    return torch.load(dst, weights_only=True), output


def build(tower):
    backbone = MODELS.build(tower['backbone'])
    backbone.init_weights()
    neck = None
    if tower['neck'] is not None:
        neck = MODELS.build(tower['neck'])
        neck.init_weights()
        neck.eval()
    backbone.eval()  # (MMPretrain backbones' train() returns None)
    return backbone, neck


def load_cli():
    spec = importlib.util.spec_from_file_location('open_clip_to_mmpretrain',
                                                  REPO / 'tools' / TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    return tmp_path_factory.mktemp('converters')


@pytest.fixture(scope='module')
def vit_quickgelu(root):
    return make_clip(root, 'ConvTest-ViT-quickgelu', VIT_CFG, quick_gelu=True)


@pytest.fixture(scope='module')
def vit_converted(root, vit_quickgelu):
    dst = root / 'vit_quickgelu_mmpretrain.pth'
    saved, output = convert(vit_quickgelu['checkpoint'], dst,
                            '--model-config-file', vit_quickgelu['config'])
    return dst, saved, output


@pytest.mark.parametrize('quick_gelu', [True, False])
def test_vit_matches_open_clip(root, quick_gelu, vit_quickgelu, vit_converted):
    if quick_gelu:
        clip, (dst, saved, output) = vit_quickgelu, vit_converted
    else:
        clip = make_clip(root, 'ConvTest-ViT-gelu', VIT_CFG, seed=1)
        dst = root / 'vit_gelu_mmpretrain.pth'
        saved, output = convert(clip['checkpoint'], dst, '--model-config-file',
                                clip['config'])
    info = saved['meta']['info']
    assert info == dict(
        arch='vit',
        width=64,
        layers=2,
        patch_size=8,
        image_size=32,
        feedforward_channels=256,
        pre_norm=True,
        embed_dim=48)
    assert saved['meta']['options']['num_heads'] == 2  # width / head_width
    assert saved['meta']['options']['quick_gelu'] is quick_gelu
    assert saved['state_dict']['backbone.cls_token'].shape == (1, 1, 64)
    assert saved['state_dict']['backbone.pos_embed'].shape == (1, 17, 64)
    assert 'mmpretrain.VisionTransformer' in output
    assert ('QuickGELU' in output) is quick_gelu

    tower = mmpretrain_tower_cfg(
        info, checkpoint=str(dst), **saved['meta']['options'])
    assert tower['backbone']['init_cfg']['prefix'] == 'backbone.'
    assert tower['neck']['init_cfg']['prefix'] == 'neck.'
    backbone, neck = build(tower)
    check_pretrained(backbone, tower['backbone']['init_cfg'], 'model.backbone')
    check_pretrained(neck, tower['neck']['init_cfg'], 'model.neck')

    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = neck(backbone(x))[-1]
        theirs = clip['model'].encode_image(x)
    assert ours.shape == (4, 48)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    # The other activation is measurably different: the test can tell.
    wrong = mmpretrain_tower_cfg(
        info, checkpoint=str(dst), quick_gelu=not quick_gelu)
    backbone, neck = build(wrong)
    with torch.no_grad():
        assert not torch.allclose(neck(backbone(x))[-1], theirs, atol=1e-4)


def test_modified_resnet_matches_open_clip(root):
    clip = make_clip(root, 'ConvTest-RN', RN_CFG, seed=3)
    dst = root / 'rn_mmpretrain.pth'
    saved, output = convert(clip['checkpoint'], dst, '--model-config-file',
                            clip['config'])
    info = saved['meta']['info']
    assert info['arch'] == 'resnet'
    assert tuple(info['stage_depths']) == (3, 4, 6, 3)
    assert (info['base_channels'], info['input_size'],
            info['output_dim']) == (8, 64, 48)
    # open_clip: heads = width * 32 // head_width
    assert saved['meta']['options']['num_heads'] == 8
    assert all(k.startswith('backbone.') for k in saved['state_dict'])
    assert 'mmpretrain.ModifiedResNet' in output and 'neck = None' in output

    tower = mmpretrain_tower_cfg(
        info, checkpoint=str(dst), **saved['meta']['options'])
    assert tower['backbone']['depth'] == 50 and tower['neck'] is None
    backbone, _ = build(tower)
    check_pretrained(backbone, tower['backbone']['init_cfg'], 'model.backbone')
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = backbone(x)
        theirs = clip['model'].encode_image(x)
    assert ours.shape == (4, 48)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_openai_torchscript_archive_converts_like_the_state_dict(
        root, vit_quickgelu, vit_converted):
    model = vit_quickgelu['model']
    x = torch.randn(2, 3, 32, 32)
    traced = torch.jit.trace_module(
        model, {'encode_image': (x, )}, check_trace=False)
    archive = root / 'openai_style.pt'
    torch.jit.save(traced, str(archive))
    jit_keys = set(torch.jit.load(str(archive)).state_dict())
    # Archives also hold the non-persistent text attn_mask buffer, as
    # OpenAI's do.
    assert jit_keys - {'attn_mask'} == set(model.state_dict())
    assert 'attn_mask' in load_clip_state_dict(str(archive))

    # No model config: a TorchScript source means OpenAI, i.e. QuickGELU.
    saved, output = convert(archive, root / 'from_jit.pth')
    assert saved['meta']['source_format'] == 'torchscript'
    assert 'mmpretrain.QuickGELU' in output
    expected = vit_converted[1]['state_dict']
    assert saved['state_dict'].keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(saved['state_dict'][key], value), key


def test_module_prefix_and_wrapped_state_dict_are_read(root, vit_quickgelu):
    plain = load_clip_state_dict(vit_quickgelu['checkpoint'])
    wrapped = root / 'wrapped.pt'
    torch.save(
        {
            'state_dict': {
                'module.' + k: v
                for k, v in plain.items()
            },
            'epoch': 3
        }, wrapped)
    assert load_clip_state_dict(str(wrapped)).keys() == plain.keys()
    safetensors = pytest.importorskip('safetensors.torch')
    st_file = root / 'weights.safetensors'
    safetensors.save_file({
        k: v.contiguous()
        for k, v in plain.items()
    }, str(st_file))
    loaded = load_clip_state_dict(str(st_file))
    assert all(torch.equal(loaded[k], v) for k, v in plain.items())


def test_unknown_visual_key_is_refused(root, vit_quickgelu, tmp_path):
    state_dict = load_clip_state_dict(vit_quickgelu['checkpoint'])
    state_dict['visual.transformer.resblocks.0.ls_1.gamma'] = torch.ones(64)
    with pytest.raises(ValueError, match=r'resblocks\.0\.ls_1\.gamma') as e:
        convert_visual_tower(state_dict)
    assert 'Supported visual towers' in str(e.value)

    src, dst = tmp_path / 'layerscale.pt', tmp_path / 'out.pth'
    torch.save(state_dict, src)
    with pytest.raises(ValueError, match='ls_1.gamma'):
        load_cli().main([str(src), str(dst)])
    assert not dst.exists()


def test_unknown_non_visual_key_is_refused(vit_quickgelu):
    state_dict = load_clip_state_dict(vit_quickgelu['checkpoint'])
    state_dict['text_decoder.proj.weight'] = torch.ones(2, 2)
    with pytest.raises(ValueError, match=r'text_decoder\.proj\.weight'):
        convert_visual_tower(state_dict)


def test_converters_package_exports_the_converter():
    import tip_adapter_mm.converters as converters
    assert converters.convert_visual_tower is convert_visual_tower
    assert converters.load_clip_state_dict is load_clip_state_dict
    assert converters.mmpretrain_tower_cfg is mmpretrain_tower_cfg
    assert (converters.tower_options_from_model_config is
            tower_options_from_model_config)


def test_timm_tower_is_refused():
    with pytest.raises(ValueError, match='timm'):
        convert_visual_tower({'visual.trunk.stem.weight': torch.ones(1)})


def test_options_follow_open_clip_model_configs(vit_converted):

    def options(name):
        return tower_options_from_model_config(
            open_clip.get_model_config(name), model_name=name)

    assert options('ViT-B-16') == dict(
        num_heads=12, quick_gelu=False, ln_eps=1e-5)
    assert options('ViT-B-32-quickgelu')['quick_gelu'] is True
    assert options('RN50')['num_heads'] == 32  # 64 * 32 // 64
    info = vit_converted[1]['meta']['info']
    vit_cfg = dict(embed_dim=48, vision_cfg=VIT_CFG)
    assert tower_options_from_model_config(vit_cfg, info)['num_heads'] == 2
    with pytest.raises(ValueError, match='pool_type'):
        tower_options_from_model_config(
            dict(vit_cfg, vision_cfg=dict(VIT_CFG, pool_type='avg')), info)
    with pytest.raises(ValueError, match=r'width: \(32, 64\)'):
        tower_options_from_model_config(
            dict(vit_cfg, vision_cfg=dict(VIT_CFG, width=32)), info)
    with pytest.raises(ValueError, match='stage depths'):
        mmpretrain_tower_cfg(
            dict(
                arch='resnet',
                stage_depths=(4, 6, 10, 6),
                base_channels=80,
                width=80,
                feature_dim=2560,
                input_size=288,
                image_size=288,
                output_dim=640,
                embed_dim=640))


def test_existing_dst_is_not_overwritten(vit_quickgelu, tmp_path):
    dst = tmp_path / 'exists.pth'
    dst.write_bytes(b'precious bytes')
    with pytest.raises(FileExistsError, match='exists.pth'):
        load_cli().main([vit_quickgelu['checkpoint'], str(dst)])
    assert dst.read_bytes() == b'precious bytes'
    assert [p.name for p in tmp_path.iterdir()] == ['exists.pth']


def test_src_may_be_an_open_clip_pretrained_tag(vit_quickgelu, tmp_path,
                                                monkeypatch, capsys):
    """'openai' with --model-name: open_clip resolves and downloads the
    tag (stubbed here: no network), and its pretrained config's QuickGELU
    reaches the printed config even though the model config says GELU."""
    import open_clip
    name = 'ConvTest-ViT-quickgelu'
    asked = []
    monkeypatch.setattr(open_clip, 'list_pretrained_tags_by_model',
                        lambda model: ['openai'] if model == name else [])
    monkeypatch.setattr(open_clip, 'get_pretrained_cfg',
                        lambda model, tag: dict(quick_gelu=True, url='x'))
    monkeypatch.setattr(open_clip, 'get_model_config',
                        lambda model: dict(json.loads(Path(
                            vit_quickgelu['config']).read_text()),
                                           quick_gelu=False))

    def download(cfg, *args, **kwargs):
        asked.append(cfg)
        return vit_quickgelu['checkpoint']

    monkeypatch.setattr(open_clip, 'download_pretrained', download)
    dst = tmp_path / 'from_tag.pth'
    load_cli().main(['openai', str(dst), '--model-name', name])
    assert asked == [dict(quick_gelu=True, url='x')]
    saved = torch.load(dst, weights_only=True)
    assert saved['meta']['pretrained_tag'] == 'openai'
    assert "'mmpretrain.QuickGELU'" in capsys.readouterr().out
    expected, _ = convert_visual_tower(
        load_clip_state_dict(vit_quickgelu['checkpoint']))
    assert saved['state_dict'].keys() == expected.keys()
    with pytest.raises(FileNotFoundError,
                       match=r"neither a file nor .*tags: \['openai'\]"):
        load_cli().main(['laion9b', str(tmp_path / 'x.pth'),
                         '--model-name', name])


def test_missing_src_names_the_path(tmp_path):
    missing = tmp_path / 'nope.pt'
    with pytest.raises(FileNotFoundError, match='nope.pt'):
        load_cli().main([str(missing), str(tmp_path / 'out.pth')])
    garbage = tmp_path / 'garbage.pt'
    garbage.write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match='garbage.pt'):
        load_clip_state_dict(str(garbage))


def vit_tower(dst):
    info = dict(
        arch='vit',
        width=64,
        layers=2,
        patch_size=8,
        image_size=32,
        feedforward_channels=256,
        pre_norm=True,
        embed_dim=48)
    return mmpretrain_tower_cfg(info, checkpoint=str(dst))


def test_check_pretrained_shape_mismatch(root, vit_converted, tmp_path):
    narrow = make_clip(
        root, 'ConvTest-ViT-narrow', dict(VIT_CFG, width=32), seed=5)
    converted, _ = convert_visual_tower(
        load_clip_state_dict(narrow['checkpoint']))
    dst = tmp_path / 'narrow.pth'
    torch.save({'state_dict': converted}, dst)
    tower = vit_tower(vit_converted[0])
    backbone = MODELS.build(tower['backbone'])
    init_cfg = dict(tower['backbone']['init_cfg'], checkpoint=str(dst))
    with pytest.raises(ValueError) as err:
        check_pretrained(backbone, init_cfg, 'model.backbone')
    message = str(err.value)
    assert 'model.backbone' in message and str(dst) in message
    assert "'backbone.'" in message
    assert ('patch_embed.projection.weight: expected [64, 3, 8, 8], '
            'found [32, 3, 8, 8]') in message


def test_check_pretrained_missing_key(vit_converted, tmp_path):
    saved = torch.load(vit_converted[0], weights_only=True)
    del saved['state_dict']['backbone.layers.1.ln2.weight']
    dst = tmp_path / 'incomplete.pth'
    torch.save(saved, dst)
    tower = vit_tower(dst)
    backbone = MODELS.build(tower['backbone'])
    neck = MODELS.build(tower['neck'])
    check_pretrained(neck, tower['neck']['init_cfg'], 'model.neck')
    with pytest.raises(
            ValueError, match=r'missing keys \(1\): '
            r'layers\.1\.ln2\.weight'):
        check_pretrained(backbone, tower['backbone']['init_cfg'],
                         'model.backbone')
    # Other init_cfg entries are ignored; no Pretrained entry -> no-op.
    check_pretrained(backbone, [dict(type='Constant', val=0)], 'model.b')
    check_pretrained(backbone, None, 'model.b')


def test_check_pretrained_missing_file(vit_converted, tmp_path):
    tower = vit_tower(tmp_path / 'absent.pth')
    backbone = MODELS.build(tower['backbone'])
    with pytest.raises(FileNotFoundError, match='absent.pth'):
        check_pretrained(
            backbone,
            [dict(type='Constant', val=0), tower['backbone']['init_cfg']],
            'model.backbone')
