"""Tip-Adapter-F: only the keys train, the SPEC logits hold with trained
keys, best epoch on validation, kill-and-resume, 2 processes vs 1, and the
encoders idle while training on the stored support views (fast path)."""
import re
import textwrap
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import (python_tool, read_count_log, run_distributed, run_tool,
                      split_fingerprints, tiny_config)
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper

from mmpretrain.registry import MODELS, RUNNERS
from mmpretrain.structures import DataSample

EPOCHS = 4
# The schedule follows train_cfg.max_epochs (no T_max/end of its own).
F_EXTRA = f"""
train_cfg = dict(max_epochs={EPOCHS}, global_batch_size=4)
"""
#: Images in the generated folders: 4 shots x 3 classes, val 4 and test 5
#: per class; tiny_config's few_shot_cfg.augment_epoch.
SHOT_IMAGES, NUM_VAL, NUM_TEST, VIEWS = 12, 12, 15, 3

# A validation metric scripted per validation call (the call counter lives in
# the message hub, so it is saved in checkpoints and survives a resume):
# epoch 2 is the best on "validation" whatever the test accuracy says.
SCRIPTED_METRIC = '''
from mmengine.evaluator import BaseMetric
from mmengine.logging import MessageHub
from mmpretrain.registry import METRICS

SCORES = [50.0, 90.0, 60.0, 70.0]


@METRICS.register_module()
class ScriptedValAccuracy(BaseMetric):
    default_prefix = 'accuracy'

    def process(self, data_batch, data_samples):
        self.results.append(len(data_samples))

    def compute_metrics(self, results):
        hub = MessageHub.get_current_instance()
        call = hub.get_info('scripted_val_calls', 0)
        hub.update_info('scripted_val_calls', call + 1)
        return {'top1': SCORES[call]}
'''

# Kills the process right after epoch 2 is checkpointed, before its
# validation: the harshest point for a resume.
KILL_HOOK = '''
import os
from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS


@HOOKS.register_module()
class KillAfterEpochHook(Hook):
    priority = 'LOWEST'

    def after_train_epoch(self, runner):
        if runner.epoch + 1 == 2:
            os._exit(3)
'''


@pytest.fixture(scope='module')
def plugins(tmp_path_factory):
    root = tmp_path_factory.mktemp('plugins')
    (root / 'scripted_metric.py').write_text(SCRIPTED_METRIC)
    (root / 'kill_hook.py').write_text(KILL_HOOK)
    return root


def f_config(path, tiny_clip, image_folders, extra=''):
    return tiny_config(
        path,
        tiny_clip,
        image_folders,
        schedule='tip_adapter_f',
        extra=F_EXTRA + extra)


SCRIPTED = """
custom_imports = dict(imports=['tip_adapter_mm', 'scripted_metric'])
val_evaluator = dict(_delete_=True, type='ScriptedValAccuracy')
"""


@pytest.fixture(scope='module')
def uninterrupted(tiny_clip, image_folders, plugins, tmp_path_factory):
    root = tmp_path_factory.mktemp('tip_f')
    config = f_config(root / 'tip_f.py', tiny_clip, image_folders, SCRIPTED)
    work_dir = root / 'work'
    output = run_tool(
        python_tool('train.py', str(config), '--work-dir', str(work_dir)),
        python_path=str(plugins))
    return config, work_dir, output


def final_top1(output):
    return float(
        re.findall(r'Epoch\(test\).*accuracy/top1: ([0-9.]+)', output)[-1])


def state(path):
    return torch.load(path, weights_only=False)['state_dict']


def test_only_the_keys_train_and_encoder_is_untouched(tiny_clip, image_folders,
                                                      tmp_path):
    cfg = Config.fromfile(
        str(f_config(tmp_path / 'f.py', tiny_clip, image_folders)))
    cfg.work_dir = str(tmp_path / 'work')
    runner = RUNNERS.build(cfg)
    model = runner.model
    encoder_before = {
        k: v.detach().clone()
        for k, v in model.backbone.visual.state_dict().items()
    }
    # FewShotRunner fits the head before the optimizer exists.
    assert model.head.is_fitted
    keys_before = model.head.cache.keys.detach().clone()
    assert keys_before.shape == (SHOT_IMAGES, 32)
    values_before = model.head.cache.values.clone()
    weights_before = model.head.zero_shot_weights.clone()
    assert [n for n, p in model.named_parameters()
            if p.requires_grad] == ['head.cache.keys']
    runner.train()

    optimizer = runner.optim_wrapper.optimizer
    params = [p for group in optimizer.param_groups for p in group['params']]
    assert len(params) == 1 and params[0] is model.head.cache.keys
    for name, value in model.backbone.visual.state_dict().items():
        assert torch.equal(value, encoder_before[name]), name
    assert all(p.grad is None for p in model.backbone.parameters())
    assert not torch.equal(model.head.cache.keys.detach(), keys_before)
    assert torch.equal(model.head.cache.values, values_before)
    assert torch.equal(model.head.zero_shot_weights, weights_before)
    # The cosine schedule spans train_cfg.max_epochs (no T_max in the
    # config): every iteration of the EPOCHS epochs.
    iters = EPOCHS * len(runner.train_dataloader)
    assert len(runner.train_dataloader) == SHOT_IMAGES // 4
    scheduler, = runner.param_schedulers
    assert (scheduler.T_max, scheduler.end) == (iters, iters)


def test_one_step_lowers_the_loss_and_logits_follow_spec(tiny_clip):
    model = MODELS.build(
        dict(
            type='CLIPFewShotClassifier',
            backbone=dict(type='OpenCLIPVisualBackbone', **tiny_clip),
            head=dict(
                type='TipAdapterHead',
                num_classes=3,
                alpha=1.17,
                beta=1.0,
                train_cache_keys=True)))
    g = torch.Generator().manual_seed(0)
    model.head.set_zero_shot_weights(
        F.normalize(torch.randn(32, 3, generator=g), dim=0))
    model.head.cache.set(
        F.normalize(torch.randn(6, 32, generator=g), dim=-1),
        torch.eye(3).repeat(2, 1))
    feats = torch.randn(8, 32, generator=g)  # raw, as in cached views
    labels = torch.arange(8) % 3
    # A batch as pseudo_collate gives it from the stored views: one list of
    # per-sample features per visual encoder.
    data = dict(
        feats=[list(feats)],
        data_samples=[DataSample().set_gt_label(int(y)) for y in labels])
    optim_wrapper = build_optim_wrapper(
        model,
        dict(
            constructor='TrainableParamsOptimWrapperConstructor',
            optimizer=dict(type='AdamW', lr=1e-2, eps=1e-4,
                           weight_decay=0.01)))
    model.train()
    loss_before = model.train_step(data, optim_wrapper)['loss'].item()
    with torch.no_grad():
        loss_after = model(
            feats=(feats, ), data_samples=data['data_samples'],
            mode='loss')['loss'].item()
    assert loss_after < loss_before

    f = F.normalize(feats, dim=-1).double().numpy()
    W = model.head.zero_shot_weights.double().numpy()
    K = model.head.cache.keys.detach().double().numpy()
    L = model.head.cache.values.double().numpy()
    expected = 100 * f @ W + 1.17 * np.exp(-1.0 * (1 - f @ K.T)) @ L
    with torch.no_grad():
        logits = model.head((F.normalize(feats, dim=-1), ))
    np.testing.assert_allclose(
        logits.double().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_best_epoch_is_chosen_on_validation(uninterrupted, image_folders):
    config, work_dir, output = uninterrupted
    best = sorted(work_dir.glob('best_accuracy_top1_epoch_*.pth'))
    assert [p.name for p in best] == ['best_accuracy_top1_epoch_2.pth']
    assert 'Loading the best epoch on validation' in output
    final = state(work_dir / 'final_searched.pth')
    kept = state(best[0])
    assert torch.equal(final['head.cache.keys'], kept['head.cache.keys'])
    last = state(work_dir / f'epoch_{EPOCHS}.pth')
    assert not torch.equal(final['head.cache.keys'], last['head.cache.keys'])
    assert bool(final['head.is_searched'])
    # The reported test top-1 is the searched best-on-val model's.
    assert 0 <= final_top1(output) <= 100


def test_test_py_reproduces_final_metric(uninterrupted, plugins, tmp_path):
    config, work_dir, output = uninterrupted
    again = run_tool(
        python_tool('test.py', str(config),
                    str(work_dir / 'final_searched.pth'), '--work-dir',
                    str(tmp_path)),
        python_path=str(plugins))
    assert final_top1(again) == final_top1(output)
    assert 'Hyperparameter search' not in again


def test_kill_and_resume_equals_uninterrupted(uninterrupted, tiny_clip,
                                              image_folders, plugins,
                                              tmp_path):
    _, full_dir, full_output = uninterrupted
    killed = f_config(
        tmp_path / 'killed.py', tiny_clip, image_folders, SCRIPTED + """
custom_imports = dict(imports=['tip_adapter_mm', 'scripted_metric',
                               'kill_hook'])
custom_hooks = [
    dict(type='BuildCacheHook'),
    dict(type='HyperparameterSearchHook'),
    dict(type='ValidateAfterResumeHook'),
    dict(type='KillAfterEpochHook'),
]
""")
    work_dir = tmp_path / 'work'
    run_tool(
        python_tool('train.py', str(killed), '--work-dir', str(work_dir)),
        python_path=str(plugins),
        expect_rc=3)
    assert (work_dir / 'epoch_2.pth').exists()
    assert not (work_dir / 'epoch_3.pth').exists()
    resumed_cfg = f_config(tmp_path / 'resumed.py', tiny_clip, image_folders,
                           SCRIPTED)
    output = run_tool(
        python_tool('train.py', str(resumed_cfg), '--work-dir', str(work_dir),
                    '--resume'),
        python_path=str(plugins))
    assert 'validating it before training goes on' in output
    assert [p.name for p in work_dir.glob('best_*.pth')
            ] == ['best_accuracy_top1_epoch_2.pth']
    for name in (f'epoch_{EPOCHS}.pth', 'final_searched.pth'):
        resumed, full = state(work_dir / name), state(full_dir / name)
        torch.testing.assert_close(
            resumed['head.cache.keys'],
            full['head.cache.keys'],
            rtol=1e-6,
            atol=1e-7)
    assert final_top1(output) == final_top1(full_output)


def test_dist_train_two_processes_matches_one(uninterrupted, plugins,
                                              tmp_path):
    config, full_dir, full_output = uninterrupted
    work_dir = tmp_path / 'dist'
    output = run_distributed('dist_train.sh', str(config), 2, '--work-dir',
                             str(work_dir), python_path=str(plugins))
    assert 'global_batch_size 4: 2 per process x 2' in output
    for name in (f'epoch_{EPOCHS}.pth', 'final_searched.pth'):
        two, one = state(work_dir / name), state(full_dir / name)
        torch.testing.assert_close(
            two['head.cache.keys'],
            one['head.cache.keys'],
            rtol=1e-5,
            atol=1e-5)
    assert state(work_dir / 'final_searched.pth')['head.alpha'] == state(
        full_dir / 'final_searched.pth')['head.alpha']
    assert final_top1(output) == final_top1(full_output)


def test_reencode_train_set_must_match_fewshot_set(tiny_clip, image_folders,
                                                   tmp_path):
    extra = textwrap.dedent("""
    train_dataloader = dict(
        sampler=dict(type='DefaultSampler', shuffle=True),
        dataset=dict(_delete_=True, type='FewShotDataset', num_shots=2,
                     seed=1, dataset=dict(type='CustomDataset',
                                          data_root=data_root,
                                          data_prefix='train')))
    """)
    cfg = Config.fromfile(
        str(f_config(tmp_path / 'f.py', tiny_clip, image_folders, extra)))
    cfg.work_dir = str(tmp_path / 'work')
    runner = RUNNERS.build(cfg)
    # FewShotTrainLoop checks it when the train loop is built.
    with pytest.raises(
            ValueError, match=r"differ in \['num_shots'\]: "
            r'num_shots=2 vs 4'):
        runner.train()


def test_training_checks_val_and_test_classes(tiny_clip, image_folders,
                                              tmp_path):
    import shutil
    data = tmp_path / 'data'
    shutil.copytree(image_folders, data)
    for split in ('val', 'test'):
        (data / split / 'blue_sky').rename(data / split / 'navy_sky')
    cfg = Config.fromfile(str(f_config(tmp_path / 'f.py', tiny_clip, data)))
    cfg.work_dir = str(tmp_path / 'work')
    # Folders sort as green_leaf, navy_sky, red_apple in val/ and test/.
    # FewShotRunner fits the head and encodes val before training starts:
    # the check fires while the runner is built, at the latest in train().
    with pytest.raises(
            ValueError,
            match=r"(?s)Class names of the val set.*"
            r"class 0: 'blue_sky' \(the few-shot train set\) vs "
            r"'green_leaf' \(the val set\)"):
        runner = RUNNERS.build(cfg)
        runner.train()


# -- What the encoders do while training --------------------------------------


def counting_extra(count_file, train_set: str = '') -> str:
    return F_EXTRA + textwrap.dedent(f"""
    custom_imports = dict(imports=['tip_adapter_mm', 'counting_backbone'])
    model['backbone'] = dict(clip, type='CountingOpenCLIPVisualBackbone',
                             count_file={str(count_file)!r})
    custom_hooks = [
        dict(type='BuildCacheHook'),
        dict(type='HyperparameterSearchHook'),
        dict(type='ValidateAfterResumeHook'),
        dict(type='EncoderCountMarkerHook', count_file={str(count_file)!r}),
    ]
    """) + train_set


#: Tip-Adapter-F as the reference code trains it (as
#: configs/tip_f_imagenet_16shot_reencode.py): the few-shot set itself as the
#: train set, augmented and encoded again at every iteration.
REENCODE = textwrap.dedent("""
train_dataloader = dict(
    _delete_=True,
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='FewShotDataset', num_shots=4, seed=1,
                 dataset=dict(type='CustomDataset', data_root=data_root,
                              data_prefix='train',
                              pipeline={{_base_.train_pipeline}})))
""")


def phases(lines):
    """The count log split at the markers: (before before_train, between
    before_train and after_train, after after_train)."""
    assert lines.count('mark before_train') == 1, lines
    assert lines.count('mark after_train') == 1, lines
    start = lines.index('mark before_train')
    end = lines.index('mark after_train')
    assert start < end
    return lines[:start], lines[start + 1:end], lines[end + 1:]


def run_counted(tmp_path, tiny_clip, image_folders, counting_plugin, name,
                train_set=''):
    count_file = tmp_path / f'{name}_encoded.log'
    config = f_config(tmp_path / f'{name}.py', tiny_clip, image_folders,
                      counting_extra(count_file, train_set))
    output = run_tool(
        python_tool('train.py', str(config), '--work-dir',
                    str(tmp_path / name)),
        python_path=str(counting_plugin))
    return config, output, phases(read_count_log(count_file))


def test_fast_path_encoders_idle_while_training_val_on_stored_features(
        tiny_clip, image_folders, counting_plugin, tmp_path):
    config, output, (before, during, after) = run_counted(
        tmp_path, tiny_clip, image_folders, counting_plugin, 'fast')
    # Not one image goes through the encoder between before_train and
    # after_train: training reads the stored support views, validation the
    # stored val features.
    assert during == []
    val = split_fingerprints(config, 'val')
    test = split_fingerprints(config, 'test')
    assert sum(val.values()) == NUM_VAL and sum(test.values()) == NUM_TEST
    # Before training: the support views and the val images, once each.
    assert len(before) == VIEWS * SHOT_IMAGES + NUM_VAL
    assert Counter(line for line in before if line in val) == val
    assert not any(line in test for line in before)
    # After training: the test images, once each (tools/train.py tests).
    assert Counter(after) == test
    # Validation ran after every epoch, on those stored features.
    assert sorted({int(e) for e in re.findall(r'Epoch\(val\) \[(\d+)\]',
                                              output)}) == list(
                                                  range(1, EPOCHS + 1))
    assert output.count(f'Encoding {NUM_VAL} val images') == 1
    assert output.index(f'Encoding {NUM_VAL} val images') < output.index(
        'Epoch(train)')


def test_reencode_train_set_is_encoded_while_training(tiny_clip,
                                                      image_folders,
                                                      counting_plugin,
                                                      tmp_path):
    config, output, (before, during, after) = run_counted(
        tmp_path, tiny_clip, image_folders, counting_plugin, 'reencode',
        REENCODE)
    val = split_fingerprints(config, 'val')
    # Every epoch encodes a fresh augmentation of the 12 few-shot images...
    assert len(during) == EPOCHS * SHOT_IMAGES
    # ... but validation still runs on the stored val features.
    assert not any(line in val for line in during)
    assert Counter(line for line in before if line in val) == val
    assert sorted({int(e) for e in re.findall(r'Epoch\(val\) \[(\d+)\]',
                                              output)}) == list(
                                                  range(1, EPOCHS + 1))
    assert Counter(after) == split_fingerprints(config, 'test')
