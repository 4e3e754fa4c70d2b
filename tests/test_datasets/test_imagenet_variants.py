"""ImageNet-V2, -Sketch, -A and -R: labels and class names from their
released folder layouts, the 200-class subset metric, clear errors, and
the configs of the ImageNet -> variant setting."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONFIGS
from mmengine.config import Config
from PIL import Image

import tip_adapter_mm  # noqa: F401  (registers the plugin's modules)
from mmpretrain.registry import DATASETS, METRICS
from mmpretrain.structures import DataSample
from tip_adapter_mm.datasets import (ImageNetA, ImageNetR, ImageNetSketch,
                                     ImageNetV2)
from tip_adapter_mm.datasets.class_names import read_class_names
from tip_adapter_mm.evaluation import SubsetAccuracy

#: An independent source of ImageNet's WordNet ids: timm's list, in its
#: label order (the sorted ids).
TIMM_WNIDS = (Path(__import__('timm').__file__).parent / 'data' / '_info' /
              'imagenet_synsets.txt')
#: (label, wnid, CLIP class name) facts of ImageNet.
KNOWN = [(0, 'n01440764', 'tench'), (1, 'n01443537', 'goldfish'),
         (999, 'n15075141', 'toilet paper')]


def wnids():
    names = TIMM_WNIDS.read_text().split()
    assert len(names) == 1000
    return names


def image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(path)


@pytest.fixture(scope='module')
def layouts(tmp_path_factory):
    """The four releases in miniature, and the expected (path, label)."""
    root = tmp_path_factory.mktemp('variants')
    rng = np.random.default_rng(0)
    ids = wnids()
    expected = {}
    # V2: folders named by the label; 1 or 2 images (.jpeg) each.
    items = []
    for label in range(1000):
        for i in range(1 + label % 2):
            p = (root / 'v2' / 'imagenetv2-matched-frequency-format-val' /
                 str(label) / f'{i}.jpeg')
            image(p, label % 256)
            items.append((str(p), label))
    expected['v2'] = items
    # Sketch: all 1000 wnids, .JPEG, plus a README beside the folders.
    items = []
    for label, wnid in enumerate(ids):
        p = root / 'sketch' / 'images' / wnid / 'sketch_1.JPEG'
        image(p, 7)
        items.append((str(p), label))
    (root / 'sketch' / 'images' / 'README.txt').write_text('x')
    expected['sketch'] = items
    # A and R: 200 wnids drawn at random, in a shuffled creation order.
    for name, sub in (('a', 'imagenet-a'), ('r', 'imagenet-r')):
        labels = rng.choice(1000, 200, replace=False)
        items = []
        for label in labels:
            for i in range(2):
                p = root / name / sub / ids[label] / f'img_{i}.jpg'
                image(p, int(label * 7 + i * 50) % 256)
                items.append((str(p), int(label)))
        (root / name / sub / 'README.txt').write_text('x')
        expected[name] = items
    return root, expected


CLASSES = dict(v2=ImageNetV2, sketch=ImageNetSketch, a=ImageNetA,
               r=ImageNetR)


@pytest.mark.parametrize('name', ['v2', 'sketch', 'a', 'r'])
def test_labels_and_class_names(layouts, name):
    root, expected = layouts
    dataset = CLASSES[name](data_root=str(root / name))
    got = sorted((dataset.get_data_info(i)['img_path'],
                  int(dataset.get_data_info(i)['gt_label']))
                 for i in range(len(dataset)))
    assert got == sorted(expected[name])
    clip_names = read_class_names('imagenet')
    assert dataset.metainfo['classes'] == clip_names
    for label, wnid, cls in KNOWN:
        assert wnids()[label] == wnid and clip_names[label] == cls
    subset = sorted({label for _, label in expected[name]})
    assert list(dataset.metainfo['class_subset']) == subset
    assert len(subset) == (200 if name in 'ar' else 1000)


def test_shipped_wnids_are_imagenet_label_order():
    from tip_adapter_mm.datasets.imagenet_variants import imagenet_wnids
    assert list(imagenet_wnids()) == wnids() == sorted(wnids())


def test_pipeline_packs_the_label(layouts):
    root, expected = layouts
    dataset = ImageNetA(
        data_root=str(root / 'a'),
        pipeline=[dict(type='LoadImageFromFile'), dict(type='PackInputs')])
    item = dataset[5]
    path = item['data_samples'].img_path
    assert int(item['data_samples'].gt_label) == dict(expected['a'])[path]


def numpy_subset_accuracy(scores, labels, subset, k):
    """Rank the subset's columns only, ties to the lower class index (a
    stable sort of the negated scores over increasing columns)."""
    subset = np.asarray(subset)
    order = np.argsort(-scores[:, subset], axis=1, kind='stable')[:, :k]
    predicted = subset[order]
    return 100.0 * np.mean([y in row for row, y in zip(predicted, labels)])


def test_subset_accuracy_equals_numpy(layouts):
    root, _ = layouts
    dataset = ImageNetR(data_root=str(root / 'r'))
    subset = np.asarray(dataset.metainfo['class_subset'])
    rng = np.random.default_rng(1)
    m = 300
    labels = rng.choice(subset, m)
    # Rounded scores: many exact ties, inside and across the subset.
    scores = np.round(rng.normal(size=(m, 1000)), 1)
    # The label is the best subset class for about 70% of the samples.
    scores[np.arange(m), labels] += 4.0 * (rng.random(m) < 0.7)
    # A larger score outside the subset for half the samples: the full
    # argmax would be wrong there.
    outside = np.setdiff1d(np.arange(1000), subset)
    scores[:m // 2, outside[0]] = 10.0
    # Exact ties between the label and a lower subset class.
    scores[m // 2:m // 2 + 20, subset[0]] = 9.0
    scores[m // 2:m // 2 + 20, labels[m // 2:m // 2 + 20]] = 9.0
    metric = METRICS.build(dict(type='SubsetAccuracy', topk=(1, 5)))
    metric.dataset_meta = dataset.metainfo
    metric.process(None, [
        DataSample().set_pred_score(torch.from_numpy(s)).set_gt_label(
            int(y)).to_dict() for s, y in zip(scores, labels)
    ])
    result = metric.evaluate(m)
    for k in (1, 5):
        want = numpy_subset_accuracy(scores, labels, subset, k)
        assert result[f'accuracy/top{k}'] == pytest.approx(want, abs=1e-9)
    full = 100.0 * np.mean(scores.argmax(1) == labels)
    assert abs(result['accuracy/top1'] - full) > 10  # the subset matters
    # An explicit subset gives the same; a config without one on a
    # dataset without 'class_subset' is a clear error.
    explicit = SubsetAccuracy(topk=1, class_subset=subset.tolist())
    explicit.process(None, [
        DataSample().set_pred_score(torch.from_numpy(s)).set_gt_label(
            int(y)).to_dict() for s, y in zip(scores, labels)
    ])
    assert explicit.evaluate(m)['accuracy/top1'] == result['accuracy/top1']
    bare = SubsetAccuracy()
    bare.dataset_meta = dict(classes=('a', 'b'))
    with pytest.raises(ValueError, match='class_subset'):
        bare.process(None, [])
    with pytest.raises(ValueError, match='increasing'):
        SubsetAccuracy(class_subset=[3, 1])


def test_errors_name_path_and_expectation(layouts, tmp_path):
    root, _ = layouts
    missing = tmp_path / 'nowhere'
    with pytest.raises(FileNotFoundError,
                       match=re.escape(str(missing / 'imagenet-a'))):
        ImageNetA(data_root=str(missing))
    bad = tmp_path / 'bad' / 'imagenet-r'
    for i, wnid in enumerate(wnids()[:199]):
        image(bad / wnid / 'x.jpg', i)
    image(bad / 'not_a_wnid' / 'x.jpg', 0)
    with pytest.raises(ValueError, match=r"not_a_wnid.*WordNet ids"):
        ImageNetR(data_root=str(tmp_path / 'bad'))
    image(bad / wnids()[500] / 'x.jpg', 0)  # 201 folders now
    with pytest.raises(ValueError, match='201 class folders, expected 200'):
        ImageNetR(data_root=str(tmp_path / 'bad'))
    v2 = tmp_path / 'v2' / ImageNetV2.IMAGE_DIR
    for label in range(999):
        (v2 / str(label)).mkdir(parents=True)
    (v2 / '0999').mkdir()
    with pytest.raises(ValueError, match=r"0999.*label 0\.\.999"):
        ImageNetV2(data_root=str(tmp_path / 'v2'))


VARIANT_CONFIGS = sorted(
    p.name for p in (CONFIGS / 'generalization').glob('*imagenet_to_*.py'))
VARIANT_CONFIGS += sorted(
    p.name for p in (CONFIGS / 'generalization').glob('*16shot_to_*.py'))


def test_variant_configs_exist():
    # Zero-shot CLIP, Tip-Adapter and -F, and the 16 other methods'
    # ImageNet configs, each to the four sets.
    assert len(VARIANT_CONFIGS) == 4 * (3 + 16)


@pytest.mark.parametrize('name', VARIANT_CONFIGS)
def test_variant_configs_build_and_name_missing_data(name, tmp_path):
    cfg = Config.fromfile(str(CONFIGS / 'generalization' / name))
    variant = name.rsplit('imagenet_', 1)[1][:-3]
    want = dict(v2='ImageNetV2', sketch='ImageNetSketch', a='ImageNetA',
                r='ImageNetR')[variant]
    dataset_cfg = cfg.test_dataloader.dataset
    assert dataset_cfg.type == want
    assert cfg.test_evaluator.type == ('SubsetAccuracy' if variant in 'ar'
                                       else 'StableAccuracy')
    # Adapted on ImageNet: shots and validation are ImageNet's.
    assert cfg.fewshot_dataloader.dataset.dataset.type == 'CLIPImageNet'
    assert cfg.model.head.num_classes == 1000
    METRICS.build(cfg.test_evaluator)
    dataset_cfg.data_root = str(tmp_path / 'missing')
    with pytest.raises(FileNotFoundError, match=re.escape(str(
            tmp_path / 'missing'))):
        DATASETS.build(dataset_cfg)


def test_zero_shot_on_imagenet_a_through_the_runner(layouts, tmp_path,
                                                    tiny_clip):
    """The runner tests a 1000-class model on ImageNet-A: the reported
    top-1 is the NumPy subset argmax of the model's own logits."""
    from mmpretrain.registry import RUNNERS
    from conftest import tiny_config
    root, expected = layouts
    imagenet = tmp_path / 'imagenet'
    for wnid in wnids():  # one train image per class: names the classes
        image(imagenet / 'train' / wnid / 'a.JPEG', 5)
    head = ('dict(_delete_=True, type="ZeroShotHead", num_classes=1000, '
            'topk=(1, ))')
    path = tiny_config(tmp_path / 'cfg.py', tiny_clip, imagenet,
                       num_shots=1, augment_epoch=1, head=head,
                       model_base='tip_adapter_rn50')
    cfg = Config.fromfile(str(path))
    pipeline = cfg.test_dataloader.dataset.pipeline
    cfg.fewshot_dataloader.dataset.dataset = dict(
        type='CLIPImageNet', data_root=str(imagenet), split='train',
        pipeline=pipeline)
    a_set = dict(type='ImageNetA', data_root=str(root / 'a'),
                 pipeline=pipeline)
    cfg.val_dataloader.dataset = dict(a_set, type='ImageNetR',
                                      data_root=str(root / 'r'))
    cfg.few_shot_cfg.protocol = 'none'  # nothing to select
    cfg.test_dataloader.dataset = a_set
    cfg.test_dataloader.batch_size = 64
    cfg.test_evaluator = dict(type='SubsetAccuracy', topk=(1, 50))
    cfg.model.templates = ['a photo of a {}.']
    cfg.work_dir = str(tmp_path / 'work')
    cfg.log_level = 'WARNING'
    runner = RUNNERS.build(cfg)
    metrics = runner.test()
    feats = runner.few_shot.split_features(runner, 'test')
    f = torch.nn.functional.normalize(feats.feats[0].double(), dim=-1)
    weights = runner.model.head.zero_shot_weights.double()
    logits = (100.0 * f @ weights).numpy()  # (M, 1000)
    labels = feats.labels.numpy()
    subset = sorted({label for _, label in expected['a']})
    for k in (1, 50):
        want = numpy_subset_accuracy(logits, labels, subset, k)
        assert metrics[f'accuracy/top{k}'] == pytest.approx(want, abs=1e-9)
    # Ranking all 1000 classes would give another top-50 accuracy.
    full = numpy_subset_accuracy(logits, labels, range(1000), 50)
    assert abs(full - metrics['accuracy/top50']) > 5
    assert sorted(labels.tolist()) == sorted(y for _, y in expected['a'])
