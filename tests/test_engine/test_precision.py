"""Encoding precision (``few_shot_cfg.precision``), the encoding pipeline
(:func:`extract_features`) and Tip-Adapter-F trained under MMEngine's
AmpOptimWrapper: fp32 against bf16 on the tiny CLIP, on the CPU."""
import importlib.util
import json
import math
from pathlib import Path

import mmengine.optim.optimizer.amp_optimizer_wrapper as amp_wrapper
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import tiny_config
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.runner import Runner
from torch.utils.data import DataLoader

from mmpretrain.registry import MODELS, RUNNERS
from mmpretrain.structures import DataSample
from tip_adapter_mm.engine import (FewShotBuilder, extract_features,
                                   precision_dtype, read_features)
from tip_adapter_mm.engine import feature_extraction
from tip_adapter_mm.engine.few_shot_builder import (encoder_description,
                                                    encoding_loader_cfg)

#: Tolerances of bf16 against fp32, on the tiny CLIP (one ViT layer of
#: width 32). bf16 keeps 8 bits of mantissa (relative rounding 2**-9 =
#: 0.2 %), and the tower rounds at each op under autocast: measured, the
#: features differ by at most 0.021 in absolute value (their components
#: reach 2.7) and their cosine to the fp32 ones stays above 0.99997; the
#: bounds leave about twice that room.
MAX_ABS_DIFF = 0.05
MIN_COSINE = 0.9999
#: Test images of the tiny problem (5 per class, 3 classes): one image is
#: 6.7 points of top-1. bf16 may move the logits of an image close to the
#: boundary; the accuracy may differ by at most one image.
TOP1_POINTS = 100 / 15 + 1e-6


# -- precision names ----------------------------------------------------------
def test_precision_dtype_names_the_key_and_the_values():
    assert precision_dtype('fp32') is torch.float32
    assert precision_dtype('fp16') is torch.float16
    assert precision_dtype('bf16') is torch.bfloat16
    for bad in ('half', 'FP16', 'float16', None, 16):
        with pytest.raises(ValueError) as err:
            precision_dtype(bad)
        assert 'few_shot_cfg.precision' in str(err.value)
        assert "['fp32', 'fp16', 'bf16']" in str(err.value)
        assert repr(bad) in str(err.value)
    with pytest.raises(ValueError, match='few_shot_cfg.precision'):
        FewShotBuilder(precision='half')


def test_precision_is_part_of_every_description():
    model = dict(backbone=dict(type='X', pretrained=None))
    fp32 = encoder_description(model)
    assert fp32['precision'] == 'fp32'
    assert encoder_description(model, 'bf16') == dict(fp32, precision='bf16')
    with pytest.raises(ValueError, match='few_shot_cfg.precision'):
        encoder_description(model, 'fp64')


def test_encoding_loaders():
    cfg = dict(batch_size=8, num_workers=0, persistent_workers=True,
               sampler=dict(type='InfiniteSampler', shuffle=True),
               dataset=dict(type='D'))
    loader = encoding_loader_cfg(cfg, pin_memory=False)
    assert loader == dict(cfg, pin_memory=False, persistent_workers=False,
                          sampler=dict(type='DefaultSampler',
                                       shuffle=False))
    assert 'prefetch_factor' not in loader  # DataLoader refuses it then
    loader = encoding_loader_cfg(dict(cfg, num_workers=2), pin_memory=True)
    assert (loader['pin_memory'], loader['prefetch_factor'],
            loader['persistent_workers']) == (True, 4, False)
    loader = encoding_loader_cfg(
        dict(cfg, num_workers=2, prefetch_factor=8), pin_memory=True)
    assert loader['prefetch_factor'] == 8
    assert cfg['num_workers'] == 0  # the config is not changed


# -- extract_features on one rank ---------------------------------------------
class ToyEncoders(nn.Module):
    """Two 'encoders' of ``(B, 3, 4, 4)`` images: a conv tower ``(B, 5)``
    and a linear map of the mean colour ``(B, 2)``; they record what they
    ran under."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.data_preprocessor = MODELS.build(
            dict(type='FeatureOrImageDataPreprocessor'))
        self.conv = nn.Conv2d(3, 5, kernel_size=2)
        self.linear = nn.Linear(3, 2)
        self.seen = []

    @property
    def encoders(self):
        return [self.conv, self.linear]

    def encode_image(self, inputs):
        self.seen.append(
            dict(autocast=torch.is_autocast_enabled('cpu'),
                 dtype=torch.get_autocast_dtype('cpu'),
                 channels_last=inputs.is_contiguous(
                     memory_format=torch.channels_last),
                 weight_channels_last=self.conv.weight.is_contiguous(
                     memory_format=torch.channels_last)))
        return (self.conv(inputs).mean(dim=(2, 3)),
                self.linear(inputs.mean(dim=(2, 3))))


def toy_images(n=8):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 3, 4, 4), generator=g,
                         dtype=torch.uint8)


class ToyDataset(torch.utils.data.Dataset):

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        sample = DataSample(metainfo=dict(sample_idx=i)).set_gt_label(i % 3)
        return dict(inputs=self.images[i], data_samples=sample)


def toy_loader(images, order, batch_size=3):
    return DataLoader(ToyDataset(images), batch_size=batch_size,
                      sampler=order, collate_fn=pseudo_collate)


def expected_features(model, images):
    """Each image alone, in fp32, by hand (no data preprocessor)."""
    with torch.no_grad():
        x = images.float()
        return (model.conv(x).mean(dim=(2, 3)),
                model.linear(x.mean(dim=(2, 3))))


def test_extract_features_orders_and_deduplicates():
    model, images = ToyEncoders(), toy_images()
    # Shuffled, with repeats (as DefaultSampler pads the last ranks).
    order = [5, 2, 0, 7, 2, 1, 6, 3, 4, 5]
    out = extract_features(model, toy_loader(images, order))
    assert torch.equal(out.labels, torch.arange(8) % 3)
    assert out.labels.dtype == torch.int64
    for got, want in zip(out.feats, expected_features(model, images)):
        assert got.dtype == torch.float32 and got.is_contiguous()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert [s['autocast'] for s in model.seen] == [False] * 4
    with pytest.raises(RuntimeError, match='cover 3 distinct samples of 8'):
        extract_features(model, toy_loader(images, [2, 0, 1, 0]))


def test_extract_features_half_precisions_on_cpu(monkeypatch):
    model, images = ToyEncoders(), toy_images()
    want = expected_features(model, images)
    logged = []
    monkeypatch.setattr(feature_extraction, 'print_log',
                        lambda msg, **kwargs: logged.append(msg))
    for precision, dtype in (('bf16', torch.bfloat16),
                             ('fp16', torch.float16)):
        model.seen.clear()
        logged.clear()
        out = extract_features(model, toy_loader(images, range(8)),
                               precision=precision)
        assert {(s['autocast'], s['dtype'])
                for s in model.seen} == {(True, dtype)}
        for got, ref in zip(out.feats, want):
            assert got.dtype == torch.float32
            # Pixel values up to 255: relative rounding of the half type.
            torch.testing.assert_close(got, ref, rtol=2e-2, atol=1.0)
            assert not torch.equal(got, ref)  # it did round
        # fp16 on the CPU runs, with a note that it is slow there.
        assert len(logged) == (precision == 'fp16')


def test_encoding_loader_with_workers_through_mmengine():
    """The keys of encoding_loader_cfg are ones MMEngine's
    Runner.build_dataloader passes on and DataLoader takes: 2 workers, 4
    batches ahead each, no pinning on the CPU."""
    model, images = ToyEncoders(), toy_images()
    cfg = encoding_loader_cfg(
        dict(batch_size=3, num_workers=2, persistent_workers=True,
             collate_fn=dict(type='pseudo_collate'),
             dataset=ToyDataset(images)), pin_memory=False)
    loader = Runner.build_dataloader(cfg, seed=0)
    assert (loader.num_workers, loader.prefetch_factor, loader.pin_memory,
            loader.persistent_workers) == (2, 4, False, False)
    out = extract_features(model, loader)
    for got, want in zip(out.feats, expected_features(model, images)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_fp16_on_a_cpu_without_fp16_autocast_says_use_bf16(monkeypatch):
    monkeypatch.setattr(torch.amp, 'is_autocast_available',
                        lambda device_type: False)
    with pytest.raises(ValueError) as err:
        extract_features(ToyEncoders(), toy_loader(toy_images(), range(8)),
                         precision='fp16')
    assert "few_shot_cfg.precision='fp16'" in str(err.value)
    assert "precision='bf16' on the CPU" in str(err.value)


def test_channels_last_same_features_weights_restored():
    model, images = ToyEncoders(), toy_images()
    out = extract_features(model, toy_loader(images, range(8)),
                           channels_last=True)
    assert all(s['channels_last'] and s['weight_channels_last']
               for s in model.seen)
    assert model.conv.weight.is_contiguous()  # restored afterwards
    for got, want in zip(out.feats, expected_features(model, images)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_gather_pads_shorter_shards(monkeypatch):
    """Two ranks with shards of 2 and 3 rows, simulated from rank 0."""
    other = torch.arange(6.).view(3, 2) + 100
    mine = torch.arange(4.).view(2, 2)
    calls = []

    def fake_all_gather(t):
        calls.append(t.clone())
        if len(calls) == 1:  # the lengths
            return [t, torch.tensor([len(other)])]
        assert len(t) == len(other)  # padded to the longest
        return [t, other]

    monkeypatch.setattr(feature_extraction, 'all_gather', fake_all_gather)
    got = feature_extraction._gather(mine, world_size=2)
    assert [g.tolist() for g in got] == [mine.tolist(), other.tolist()]
    assert calls[1][2].tolist() == [0, 0]  # the padding row


# -- the tiny CLIP: fp32 against bf16 -----------------------------------------
def tiny_runner(root: Path, tiny_clip, image_folders, name, precision,
                schedule='tip_adapter', amp=False):
    extra = ('train_cfg = dict(max_epochs=4, global_batch_size=4)\n'
             if schedule == 'tip_adapter_f' else '')
    cfg = Config.fromfile(
        str(tiny_config(root / f'{name}.py', tiny_clip, image_folders,
                        schedule=schedule, extra=extra)))
    cfg.work_dir = str(root / name)
    cfg.few_shot_cfg.feature_dir = str(root / 'features')
    cfg.few_shot_cfg.precision = precision
    if amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.dtype = 'bfloat16'
    return RUNNERS.build(cfg)


def stored(feature_dir: Path):
    """``{(entry, precision): EncodedFeatures}`` of a feature store."""
    out = {}
    for desc in feature_dir.glob('*.json'):
        description = json.loads(desc.read_text())
        precision = description['encoder']['precision']
        name = desc.stem.rsplit('_', 1)[0]
        out[name, precision] = read_features(str(desc.with_suffix('.pth')))
    return out


@pytest.fixture(scope='module')
def free_runs(tiny_clip, image_folders, tmp_path_factory):
    """Training-free Tip-Adapter on fp32 and on bf16 features, one
    feature store."""
    root = tmp_path_factory.mktemp('precision')
    runs = {}
    for precision in ('fp32', 'bf16'):
        runner = tiny_runner(root, tiny_clip, image_folders, precision,
                             precision)
        metrics = runner.test()
        head = runner.model.head
        runs[precision] = dict(
            top1=metrics['accuracy/top1'],
            grid=head.search_grid(),
            best=dict(head.hyperparameters),
            weights=head.zero_shot_weights.double().numpy(),
            keys=head.cache.keys.double().numpy(),
            values=head.cache.values.double().numpy())
    return root, runs


def test_bf16_features_are_stored_apart_and_close_to_fp32(free_runs):
    root, _ = free_runs
    entries = stored(root / 'features')
    names = {name for name, _ in entries}
    assert names == {'support_views', 'val', 'test'}
    assert set(entries) == {(n, p) for n in names for p in ('fp32', 'bf16')}
    for name in names:
        fp32, bf16 = entries[name, 'fp32'], entries[name, 'bf16']
        assert torch.equal(fp32.labels, bf16.labels)
        a, b = fp32.feats[0], bf16.feats[0]
        assert b.dtype == torch.float32  # stored as float32
        diff = float((a - b).abs().max())
        cosine = float(F.cosine_similarity(a, b, dim=-1).min())
        print(f'{name}: max |fp32 - bf16| = {diff:.4f} (features up to '
              f'{float(a.abs().max()):.2f}), min cosine {cosine:.6f}')
        assert 0 < diff < MAX_ABS_DIFF
        assert MIN_COSINE < cosine < 1


def tip_logits(run, feats, beta, alpha):
    """Tip-Adapter's logits, by hand in float64."""
    f = F.normalize(feats.double(), dim=-1).numpy()
    affinity = f @ run['keys'].T
    return (100 * f @ run['weights']
            + alpha * np.exp(-beta * (1 - affinity)) @ run['values'])


def test_bf16_search_and_top1_within_tolerance(free_runs):
    """The searched (beta, alpha) agree to a grid step. The top-1 on the
    tiny problem's 15 test images is a knife edge: its random text tower
    leaves 5 test images within 0.07 logit of the boundary at fp32's
    point, and a grid step of beta moves the top-1 by 20 points. So the
    top-1 is compared at the SAME hyperparameters (within one image), each
    prediction that bf16 changes must be one of those boundary images, and
    each run's reported top-1 must be what fp32 features give at that
    run's searched point, within one image."""
    root, runs = free_runs
    fp32, bf16 = runs['fp32'], runs['bf16']
    for name, values in fp32['grid'].items():
        i = int(torch.argmin((values - fp32['best'][name]).abs()))
        j = int(torch.argmin((values - bf16['best'][name]).abs()))
        assert abs(i - j) <= 1, (name, fp32['best'], bf16['best'])
    entries = stored(root / 'features')
    labels = entries['test', 'fp32'].labels.numpy()
    report = [f"reported top-1: fp32 {fp32['top1']:.2f} at {fp32['best']}, "
              f"bf16 {bf16['top1']:.2f} at {bf16['best']}"]
    for run in (fp32, bf16):
        beta, alpha = run['best']['beta'], run['best']['alpha']
        a = tip_logits(fp32, entries['test', 'fp32'].feats[0], beta, alpha)
        b = tip_logits(bf16, entries['test', 'bf16'].feats[0], beta, alpha)
        diff = float(np.abs(a - b).max())
        top2 = np.sort(a, axis=1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]
        flips = a.argmax(1) != b.argmax(1)
        top1 = [100 * float((x.argmax(1) == labels).mean()) for x in (a, b)]
        report.append(
            f'at beta={beta:.3f}, alpha={alpha:.3f}: top-1 fp32 '
            f'{top1[0]:.2f}, bf16 {top1[1]:.2f}; max |logit difference| '
            f'{diff:.3f} (logits spread {a.std():.2f}); {int(flips.sum())} '
            f'predictions change, {int((margin < diff).sum())} images '
            f'have an fp32 margin below {diff:.3f}')
        assert 0 < diff < 0.5
        assert np.all(margin[flips] < 2 * diff)  # only boundary images
        assert abs(top1[0] - top1[1]) <= TOP1_POINTS
        # The run's own top-1 (at its searched point) is what the fp32
        # features give there, up to one image.
        assert abs(run['top1'] - top1[0]) <= TOP1_POINTS
    print('\n'.join(report))


def test_a_bad_precision_fails_before_encoding(tiny_clip, image_folders,
                                               tmp_path):
    with pytest.raises(ValueError) as err:
        tiny_runner(tmp_path, tiny_clip, image_folders, 'bad', 'fp8')
    assert "few_shot_cfg.precision must be one of ['fp32', 'fp16', " \
        "'bf16'], got 'fp8'" in str(err.value)
    assert not (tmp_path / 'features').exists()


# -- Tip-Adapter-F under AmpOptimWrapper (bf16) -------------------------------
def train(runner):
    """Train and test; the logits' dtypes in training and the losses."""
    dtypes = []
    handle = runner.model.head.register_forward_hook(
        lambda module, args, out: dtypes.append(out.dtype)
        if module.training else None)
    runner.train()
    handle.remove()
    losses = runner.message_hub.get_scalar('train/loss').data[0]
    top1 = runner.test()['accuracy/top1']
    return dict(dtypes=set(dtypes), losses=losses, top1=top1,
                best=dict(runner.model.head.hyperparameters),
                keys=runner.model.head.cache.keys.detach().clone())


def test_tip_f_trains_under_bf16_amp(free_runs, tiny_clip, image_folders,
                                     monkeypatch):
    root, _ = free_runs  # the stored features: nothing is encoded again
    fp32 = train(tiny_runner(root, tiny_clip, image_folders, 'f_fp32',
                             'fp32', 'tip_adapter_f'))
    # MMEngine's AmpOptimWrapper asserts a GPU (or NPU, MLU, MUSA) before
    # anything else; its bf16 autocast and its (then disabled) loss scaler
    # run on the CPU as they are. Lift the assertion only.
    monkeypatch.setattr(amp_wrapper, 'is_cuda_available', lambda: True)
    runner = tiny_runner(root, tiny_clip, image_folders, 'f_bf16', 'bf16',
                         'tip_adapter_f', amp=True)
    bf16 = train(runner)
    assert type(runner.optim_wrapper).__name__ == 'AmpOptimWrapper'
    assert runner.optim_wrapper.cast_dtype == torch.bfloat16
    assert fp32['dtypes'] == {torch.float32}
    assert bf16['dtypes'] == {torch.bfloat16}  # the head ran under autocast
    assert len(bf16['losses']) == len(fp32['losses']) == 4 * 3
    assert all(math.isfinite(loss) for loss in bf16['losses'])
    # The loss itself is computed in float32 (cross-entropy autocasts up):
    # the same losses up to the bf16 rounding of the logits.
    for a, b in zip(fp32['losses'], bf16['losses']):
        assert abs(a - b) <= 0.05 * abs(a) + 0.02, (fp32['losses'],
                                                    bf16['losses'])
    print('Tip-F losses fp32', [round(x, 4) for x in fp32['losses']],
          'bf16', [round(x, 4) for x in bf16['losses']])
    print(f"Tip-F fp32: top-1 {fp32['top1']:.2f} at {fp32['best']}; "
          f"bf16 AMP: top-1 {bf16['top1']:.2f} at {bf16['best']}; max key "
          f"difference {float((fp32['keys'] - bf16['keys']).abs().max()):.4f}")
    assert abs(fp32['top1'] - bf16['top1']) <= TOP1_POINTS
    torch.testing.assert_close(bf16['keys'], fp32['keys'], atol=0.05,
                               rtol=0)


# -- tools/train.py and tools/test.py --precision -----------------------------
def load_tool(name):
    spec = importlib.util.spec_from_file_location(
        f'{name}_tool', Path(__file__).parents[2] / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_precision_flag(monkeypatch):
    tool = load_tool('train')

    def cfg():
        return Config(dict(train_cfg=dict(max_epochs=1),
                           few_shot_cfg=dict(augment_epoch=3),
                           optim_wrapper=dict(optimizer=dict(type='AdamW'))))

    def apply(*argv):
        monkeypatch.setattr('sys.argv', ['train.py', 'c.py', *argv])
        return tool.apply_train_args(cfg(), tool.parse_args())

    for device, precision, wrapper in (
            ('cuda', 'bf16', dict(type='AmpOptimWrapper', dtype='bfloat16',
                                  loss_scale='dynamic')),
            ('cuda', 'fp16', dict(type='AmpOptimWrapper', dtype='float16',
                                  loss_scale='dynamic')),
            ('cuda', 'fp32', dict()),
            # MMEngine's AmpOptimWrapper needs an accelerator: on the CPU
            # only the encoding precision changes.
            ('cpu', 'bf16', dict())):
        monkeypatch.setattr(tool, 'get_device', lambda: device)
        out = apply('--precision', precision)
        assert out.few_shot_cfg == dict(augment_epoch=3, precision=precision)
        assert out.optim_wrapper == dict(optimizer=dict(type='AdamW'),
                                         **wrapper), (device, precision)
    out = apply()  # the config's precision, no AMP
    assert 'precision' not in out.few_shot_cfg
    assert 'type' not in out.optim_wrapper


def test_test_precision_flag(monkeypatch):
    tool = load_tool('test')
    for argv, few_shot_cfg in (
        (['--precision', 'bf16'], dict(augment_epoch=3, precision='bf16')),
        ([], dict(augment_epoch=3)),
    ):
        monkeypatch.setattr('sys.argv', ['test.py', 'c.py', *argv])
        cfg = tool.apply_test_args(
            Config(dict(few_shot_cfg=dict(augment_epoch=3),
                        optim_wrapper=dict(type='AmpOptimWrapper'))),
            tool.parse_args())
        assert cfg.few_shot_cfg == few_shot_cfg
        assert cfg.optim_wrapper is None  # only testing
