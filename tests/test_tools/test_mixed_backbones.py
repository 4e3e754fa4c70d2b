"""MMPretrain backbones in the loop, end to end through tools/test.py and
tools/train.py: MMPretrain's own CLIP tower with converted weights, a second
cache from another backbone, the cache alone on any backbone, and a backbone
registered by the user through custom_imports."""
import json
import pickle
import re
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import (CONFIGS, python_tool, run_distributed, run_tool,
                      tiny_config)
from mmengine.config import Config

from mmpretrain.models import ResNet
from mmpretrain.registry import DATASETS
from tip_adapter_mm.converters import (convert_visual_tower,
                                       load_clip_state_dict,
                                       mmpretrain_tower_cfg)
from tip_adapter_mm.engine import read_features

EPOCHS = 2
# The schedule follows train_cfg.max_epochs (no T_max/end of its own).
F_EXTRA = f"""
train_cfg = dict(max_epochs={EPOCHS}, global_batch_size=4)
"""
#: ImageNet's normalisation (0-255 scale), which the ResNets expect.
IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_STD = [58.395, 57.12, 57.375]


def top1(output: str) -> float:
    found = re.findall(r'accuracy/top1: ([0-9.]+)', output)
    assert found, output[-3000:]
    return float(found[-1])


def search_report(work_dir: Path) -> dict:
    reports = sorted(work_dir.glob('*/hyperparameter_search.json'))
    assert reports, list(work_dir.iterdir())
    return json.loads(reports[-1].read_text())


def stored(work_dir: Path, name: str):
    """The one feature-store entry ``<name>_<key>.pth`` of a run, read and
    verified by the package's reader."""
    files = sorted((work_dir / 'feature_cache').glob(f'{name}_*.pth'))
    assert len(files) == 1, files
    return read_features(str(files[0]))


def views_of(work_dir: Path):
    """The support views of a run: one (V * S, C_e) tensor per encoder."""
    return stored(work_dir, 'support_views')


def checkpoint_state(path: Path) -> dict:
    """A checkpoint this test wrote (its message hub needs full unpickling).
    """
    return torch.load(path, map_location='cpu', weights_only=False)[
        'state_dict']


def predictions(path: Path):
    with open(path, 'rb') as f:
        results = pickle.load(f)
    scores = torch.stack([torch.as_tensor(r['pred_score']) for r in results])
    labels = torch.tensor([int(r['gt_label']) for r in results])
    return scores, labels


@pytest.fixture(scope='module')
def tiny_resnet(tmp_path_factory) -> str:
    """A small MMPretrain ResNet-18 with random weights, saved as an
    MMPretrain classifier checkpoint (``backbone.*`` keys, plus a head key
    the backbone does not have)."""
    torch.manual_seed(1)
    net = ResNet(depth=18, stem_channels=8, base_channels=8)
    state = {f'backbone.{k}': v for k, v in net.state_dict().items()}
    state['head.fc.weight'] = torch.zeros(3, 64)
    path = tmp_path_factory.mktemp('resnet') / 'tiny_resnet18.pth'
    torch.save(dict(state_dict=state), path)
    return str(path)


def resnet_cfg(checkpoint: str) -> str:
    return (f"dict(type='ResNet', depth=18, stem_channels=8, base_channels=8,"
            f" init_cfg=dict(type='Pretrained', checkpoint={checkpoint!r}, "
            "prefix='backbone.'))")


# -- 1. MMPretrain's CLIP tower with converted weights -----------------------
@pytest.fixture(scope='module')
def converted_tower(tiny_clip, tmp_path_factory):
    """The tiny CLIP's visual tower converted by the real CLI, and the
    MMPretrain backbone/neck configs that hold it."""
    dst = tmp_path_factory.mktemp('converted') / 'tiny_vit_mmpretrain.pth'
    run_tool(
        python_tool('model_converters/open_clip_to_mmpretrain.py',
                    tiny_clip['pretrained'], str(dst), '--model-config-file',
                    tiny_clip['model_config_file']))
    _, info = convert_visual_tower(
        load_clip_state_dict(tiny_clip['pretrained']))
    head_width = json.loads(Path(
        tiny_clip['model_config_file']).read_text())['vision_cfg'][
            'head_width']
    cfg = mmpretrain_tower_cfg(
        info, num_heads=info['width'] // head_width, quick_gelu=False,
        checkpoint=str(dst))
    return cfg


def test_mmpretrain_clip_tower_gives_the_open_clip_results(
        tiny_clip, image_folders, converted_tower, tmp_path):
    """The same Tip-Adapter run with open_clip's tower and with MMPretrain's
    VisionTransformer + CLIPProjection holding the converted weights: same
    cache, same search, same test scores."""
    runs = {}
    for name, extra in [
        ('open_clip', ''),
        ('mmpretrain', f"""
model['backbone'] = dict(_delete_=True, **{converted_tower['backbone']!r})
model['neck'] = {converted_tower['neck']!r}
"""),
    ]:
        config = tiny_config(tmp_path / f'{name}.py', tiny_clip,
                             image_folders, extra=extra)
        out = tmp_path / f'{name}.pkl'
        output = run_tool(
            python_tool('test.py', str(config), '--work-dir',
                        str(tmp_path / name), '--out', str(out)))
        runs[name] = (output, predictions(out), search_report(tmp_path /
                                                              name))
    (_, (clip_scores, labels), clip_report) = runs['open_clip']
    (output, (mm_scores, mm_labels), mm_report) = runs['mmpretrain']
    assert ('TipAdapterHead fitted on 12 few-shot images x 3 augmented views'
            ' (features of dim 32)') in output
    torch.testing.assert_close(mm_scores, clip_scores, atol=1e-4, rtol=1e-4)
    assert torch.equal(mm_labels, labels)
    assert mm_report['best'] == clip_report['best']
    assert top1(output) == top1(runs['open_clip'][0])


def test_mmpretrain_clip_tower_tip_f_trains_as_open_clip(
        tiny_clip, image_folders, converted_tower, tmp_path):
    """Tip-Adapter-F through tools/train.py with each tower: the same
    fine-tuned keys, searched hyperparameters and test accuracy."""
    runs = {}
    for name, extra in [
        ('open_clip', F_EXTRA),
        ('mmpretrain', F_EXTRA + f"""
model['backbone'] = dict(_delete_=True, **{converted_tower['backbone']!r})
model['neck'] = {converted_tower['neck']!r}
"""),
    ]:
        config = tiny_config(tmp_path / f'{name}.py', tiny_clip,
                             image_folders, schedule='tip_adapter_f',
                             extra=extra)
        output = run_tool(
            python_tool('train.py', str(config), '--work-dir',
                        str(tmp_path / name)))
        runs[name] = (top1(output),
                      checkpoint_state(tmp_path / name /
                                       'final_searched.pth'))
    (clip_top1, clip_state), (mm_top1, mm_state) = (runs['open_clip'],
                                                    runs['mmpretrain'])
    assert mm_top1 == clip_top1
    for key in ('head.cache.keys', 'head.alpha', 'head.cache.beta'):
        torch.testing.assert_close(mm_state[key], clip_state[key],
                                   atol=1e-4, rtol=1e-4)
    # MMPretrain's tower is saved with the model; open_clip's is not.
    assert 'backbone.cls_token' in mm_state
    assert not any(k.startswith('backbone.') for k in clip_state)


def test_mismatched_converted_checkpoint_is_refused(tiny_clip, image_folders,
                                                    converted_tower,
                                                    tmp_path):
    backbone = dict(converted_tower['backbone'])
    backbone['arch'] = dict(backbone['arch'], embed_dims=48)
    config = tiny_config(
        tmp_path / 'bad.py', tiny_clip, image_folders, extra=f"""
model['backbone'] = dict(_delete_=True, **{backbone!r})
model['neck'] = {converted_tower['neck']!r}
""")
    output = run_tool(
        python_tool('test.py', str(config), '--work-dir',
                    str(tmp_path / 'work')), expect_rc=1)
    assert 'model.backbone' in output
    assert backbone['init_cfg']['checkpoint'] in output
    assert 'expected' in output and 'found' in output


# -- 2. A second cache from another MMPretrain backbone ----------------------
def dual_extra(checkpoint: str, train: bool) -> str:
    return f"""
model['second_backbone'] = {resnet_cfg(checkpoint)}
model['second_neck'] = dict(type='GlobalAveragePooling')
model['second_mean'] = {IMAGENET_MEAN!r}
model['second_std'] = {IMAGENET_STD!r}
model['head'].update(type='DualCacheTipAdapterHead', alpha2=1.0, beta2=1.0,
                     second_search_scale=(7, 3), second_search_step=(10, 5))
""" + (F_EXTRA if train else '')


def test_dual_cache_test_py(tiny_clip, image_folders, tiny_resnet, tmp_path):
    config = tiny_config(tmp_path / 'dual.py', tiny_clip, image_folders,
                         extra=dual_extra(tiny_resnet, train=False))
    work_dir = tmp_path / 'work'
    output = run_tool(
        python_tool('test.py', str(config), '--work-dir', str(work_dir)))
    assert ('DualCacheTipAdapterHead fitted on 12 few-shot images x 3 '
            'augmented views (features of dim 32 and 64)') in output
    # (beta, alpha) 20 x 10, then (beta2, alpha2) 10 x (5 + 1)
    assert 'Hyperparameter search on val (12 images, 260 points)' in output
    views = views_of(work_dir)
    assert views.num_sets == 2
    assert views.feats[0].shape == (36, 32)
    assert views.feats[1].shape == (36, 64)
    report = search_report(work_dir)
    assert set(report['best']) == {'beta', 'alpha', 'beta2', 'alpha2'}
    stage1, stage2 = report['stages']
    assert set(stage1['best']) == {'beta', 'alpha'}
    assert len(stage2['grid']['alpha2']) == 6
    assert stage2['grid']['alpha2'][0] == 0.0
    # Stage 2 includes alpha2 = 0, i.e. stage 1's best point.
    assert stage2['accuracy'] >= stage1['accuracy']
    assert report['accuracy'] == stage2['accuracy']
    assert (work_dir.glob('*/hyperparameter_search_stage2.png'))
    assert 0.0 <= top1(output) <= 100.0


@pytest.fixture(scope='module')
def dual_f_run(tiny_clip, image_folders, tiny_resnet, tmp_path_factory):
    root = tmp_path_factory.mktemp('dual_f')
    config = tiny_config(
        root / 'dual_f.py', tiny_clip, image_folders,
        schedule='tip_adapter_f', extra=dual_extra(tiny_resnet, train=True))
    work_dir = root / 'work'
    output = run_tool(
        python_tool('train.py', str(config), '--work-dir', str(work_dir)))
    return config, work_dir, output


def test_dual_cache_tip_f_trains_both_key_sets(dual_f_run, image_folders,
                                               tiny_resnet, tmp_path):
    config, work_dir, output = dual_f_run
    assert f'Epoch(train) [{EPOCHS}]' in output
    state = checkpoint_state(work_dir / 'final_searched.pth')
    views = views_of(work_dir)
    for key, feats in (('head.cache.keys', views.feats[0]),
                       ('head.second_cache.keys', views.feats[1])):
        initial = F.normalize(feats.view(3, 12, -1).mean(dim=0), dim=-1)
        assert state[key].shape == initial.shape
        assert (state[key] - initial).abs().max() > 1e-4, key
    # The frozen ResNet is saved untouched with the model.
    resnet = torch.load(tiny_resnet, weights_only=True)['state_dict']
    assert torch.equal(state['second_backbone.conv1.weight'],
                       resnet['backbone.conv1.weight'])
    # The checkpoint evaluates again through tools/test.py, predicts
    # through tools/infer.py and exports to TorchScript.
    checkpoint = str(work_dir / 'final_searched.pth')
    again = run_tool(
        python_tool('test.py', str(config), checkpoint, '--work-dir',
                    str(tmp_path / 'again'), '--out',
                    str(tmp_path / 'preds.pkl')))
    assert top1(again) == top1(output)
    scores, _ = predictions(tmp_path / 'preds.pkl')
    test_images = sorted(str(p) for p in (image_folders / 'test').glob('*/*'))
    run_tool(
        python_tool('infer.py', str(config), checkpoint, *test_images[:2],
                    '--device', 'cpu', '--out', str(tmp_path / 'infer.json')))
    inferred = json.loads((tmp_path / 'infer.json').read_text())['results']
    # pred_score is the softmax in float64.
    torch.testing.assert_close(
        torch.tensor([r['pred_scores'] for r in inferred],
                     dtype=torch.float64), scores[:2],
        atol=1e-5, rtol=1e-4)
    exported = tmp_path / 'dual.pt'
    export_output = run_tool(
        python_tool('export_torchscript.py', str(config), checkpoint,
                    str(exported)))
    assert 'max |diff|' in export_output
    logits = torch.jit.load(str(exported))(torch.zeros(2, 3, 224, 224))
    assert logits.shape == (2, 3)


def test_dual_cache_dist_train_two_processes_matches_one(
        dual_f_run, tmp_path):
    """Both caches, the training and the search are the same on 2 gloo
    processes as on 1."""
    config, one_dir, one_output = dual_f_run
    two_dir = tmp_path / 'dist'
    output = run_distributed('dist_train.sh', str(config), 2, '--work-dir',
                             str(two_dir))
    assert 'global_batch_size 4: 2 per process x 2' in output
    for name in ('support_views', 'val', 'test'):
        one_feats, two_feats = stored(one_dir, name), stored(two_dir, name)
        for i in range(2):  # both encoders
            torch.testing.assert_close(two_feats.feats[i],
                                       one_feats.feats[i], rtol=1e-5,
                                       atol=1e-5)
        assert torch.equal(two_feats.labels, one_feats.labels), name
    one = checkpoint_state(one_dir / 'final_searched.pth')
    two = checkpoint_state(two_dir / 'final_searched.pth')
    for key in ('head.cache.keys', 'head.second_cache.keys'):
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-5)
    for key in ('head.alpha', 'head.cache.beta', 'head.alpha2',
                'head.second_cache.beta'):
        assert two[key] == one[key], key
    assert top1(output) == top1(one_output)


# -- 3. The cache alone, any backbone ----------------------------------------
def cache_only_config(path: Path, data_root: Path, backbone: str,
                      schedule: str = 'tip_adapter', extra: str = '',
                      imports: str = "['tip_adapter_mm']") -> Path:
    """A cache-only config as a user writes it for a folder dataset."""
    path.write_text(textwrap.dedent(f"""
    _base_ = [
        {str(CONFIGS / '_base_/models/cache_only_resnet50.py')!r},
        {str(CONFIGS / '_base_/datasets/folder_fewshot.py')!r},
        {str(CONFIGS / f'_base_/schedules/{schedule}.py')!r},
        {str(CONFIGS / '_base_/default_runtime.py')!r},
    ]
    custom_imports = dict(imports={imports}, allow_failed_imports=False)
    model = dict(
        backbone=dict(_delete_=True, **{backbone}),
        head=dict(num_classes=3, search_step=20,
                  train_cache_keys={schedule == 'tip_adapter_f'}))
    data_root = {str(data_root)!r}
    loader = dict(batch_size=8, num_workers=0, persistent_workers=False)
    fewshot_dataloader = dict(
        **loader,
        dataset=dict(num_shots=4, dataset=dict(data_root=data_root)))
    val_dataloader = dict(**loader, dataset=dict(data_root=data_root))
    test_dataloader = dict(**loader, dataset=dict(data_root=data_root))
    few_shot_cfg = dict(augment_epoch=3)
    custom_hooks = [
        dict(type='BuildCacheHook'),
        dict(type='HyperparameterSearchHook'),
    ]
    """) + extra)
    return path


def test_cache_only_test_py_and_scores(image_folders, tiny_resnet,
                                       tmp_path):
    config = cache_only_config(tmp_path / 'cache_only.py', image_folders,
                               resnet_cfg(tiny_resnet))
    work_dir = tmp_path / 'work'
    out = tmp_path / 'preds.pkl'
    model_path = tmp_path / 'adapted.pth'
    output = run_tool(
        python_tool('test.py', str(config), '--work-dir', str(work_dir),
                    '--out', str(out), '--save-model', str(model_path)))
    assert 'Building zero-shot weights' not in output
    assert ('CacheOnlyHead fitted on 12 few-shot images x 3 augmented views '
            '(features of dim 64)') in output
    assert 'Hyperparameter search on val (12 images, 20 points)' in output
    report = search_report(work_dir)
    assert set(report['best']) == {'beta'}
    assert len(report['accuracy_grid']) == 20
    assert list(work_dir.glob('*/hyperparameter_search.png'))
    # The reported scores are the SPEC cache term at the searched beta,
    # recomputed here from the saved cache and the test features.
    state = checkpoint_state(model_path)
    keys, values = state['head.cache.keys'], state['head.cache.values']
    beta, alpha = float(state['head.cache.beta']), float(state['head.alpha'])
    assert beta == report['best']['beta']
    scores, labels = predictions(out)
    net = ResNet(depth=18, stem_channels=8, base_channels=8)
    net.load_state_dict({k[len('backbone.'):]: v
                         for k, v in torch.load(tiny_resnet,
                                                weights_only=True)
                         ['state_dict'].items()
                         if k.startswith('backbone.')})
    net.eval()
    cfg = Config.fromfile(str(config))
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    images = torch.stack([
        (dataset[i]['inputs'].flip(0).float() - mean) / std
        for i in range(len(dataset))
    ])
    with torch.no_grad():
        raw = net(images)[-1].mean(dim=(2, 3))
    feats = F.normalize(raw, dim=-1)
    # The test loop ran on stored test features: these same raw features.
    test_feats = stored(work_dir, 'test')
    torch.testing.assert_close(test_feats.feats[0], raw, atol=1e-4,
                               rtol=1e-4)
    # In float64, as pred_score is.
    feats, keys, values = feats.double(), keys.double(), values.double()
    expected = alpha * torch.exp(-beta * (1 - feats @ keys.t())) @ values
    assert scores.dtype == torch.float64
    torch.testing.assert_close(
        scores, F.softmax(expected, dim=1), atol=1e-4, rtol=1e-4)
    assert torch.equal(labels, torch.tensor(
        [dataset.get_data_info(i)['gt_label'] for i in range(len(dataset))]))


def test_cache_only_tip_f_train_py(image_folders, tiny_resnet, tmp_path):
    config = cache_only_config(
        tmp_path / 'cache_only_f.py', image_folders, resnet_cfg(tiny_resnet),
        schedule='tip_adapter_f',
        extra=F_EXTRA + "custom_hooks.append("
        "dict(type='ValidateAfterResumeHook'))\n")
    work_dir = tmp_path / 'work'
    output = run_tool(
        python_tool('train.py', str(config), '--work-dir', str(work_dir)))
    assert f'Epoch(train) [{EPOCHS}]' in output
    state = checkpoint_state(work_dir / 'final_searched.pth')
    initial = F.normalize(
        views_of(work_dir).feats[0].view(3, 12, -1).mean(dim=0), dim=-1)
    assert (state['head.cache.keys'] - initial).abs().max() > 1e-4
    assert bool(state['head.is_searched'])


# -- A backbone of the user's, registered through custom_imports -------------
USER_BACKBONE = '''
"""A user's own backbone, registered in MMPretrain's registry."""
import torch
import torch.nn as nn
from mmengine.model import BaseModule
from mmpretrain.registry import MODELS


@MODELS.register_module()
class MyColourNet(BaseModule):
    """Mean colour per image plus a small random projection: (B, 3) ->
    (B, out_channels)."""

    def __init__(self, out_channels=16, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.proj = nn.Linear(3, out_channels)

    def forward(self, x):
        return (self.proj(x.mean(dim=(2, 3))), )
'''


def test_user_backbone_through_custom_imports(image_folders, tmp_path):
    plugin_dir = tmp_path / 'user_code'
    plugin_dir.mkdir()
    (plugin_dir / 'my_colour_net.py').write_text(USER_BACKBONE)
    config = cache_only_config(
        tmp_path / 'user.py', image_folders,
        "dict(type='MyColourNet', out_channels=16)",
        imports="['tip_adapter_mm', 'my_colour_net']",
        extra="model['neck'] = None\n")
    output = run_tool(
        python_tool('test.py', str(config), '--work-dir',
                    str(tmp_path / 'work')),
        python_path=str(plugin_dir))
    assert ('CacheOnlyHead fitted on 12 few-shot images x 3 augmented views '
            '(features of dim 16)') in output
    # Mean colour separates the three colour classes.
    assert top1(output) == 100.0
    # Without the module on the path the import error names it.
    missing = run_tool(
        python_tool('test.py', str(config), '--work-dir',
                    str(tmp_path / 'work2')), expect_rc=1)
    assert 'my_colour_net' in missing
