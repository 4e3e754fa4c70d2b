"""The CoOp split readers and FGVC-Aircraft on generated layouts; the
custom-dataset example config end to end."""
import json

import numpy as np
import pytest
from conftest import CONFIGS, python_tool, run_tool
from PIL import Image

from mmpretrain.registry import DATASETS
from tip_adapter_mm.datasets import FewShotDataset


def write_image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(path)


def fake_coop(root, image_dir, split_file, classes, per_split):
    """A CoOp layout: images under image_dir, the split JSON."""
    splits = {}
    for split, n in per_split.items():
        items = []
        for label, name in enumerate(classes):
            for i in range(n):
                rel = f'{name.replace(" ", "_")}/{split}_{i}.jpg'
                write_image(root / image_dir / rel)
                items.append([rel, label, name])
        splits[split] = items
    (root / split_file).parent.mkdir(parents=True, exist_ok=True)
    (root / split_file).write_text(json.dumps(splits))
    return splits


@pytest.mark.parametrize('dataset_type,image_dir,split_file,classes', [
    ('CoOpCaltech101', 'caltech-101/101_ObjectCategories',
     'caltech-101/split_zhou_Caltech101.json',
     ['accordion', 'airplane', 'anchor']),
    ('CoOpEuroSAT', 'eurosat/2750', 'eurosat/split_zhou_EuroSAT.json',
     ['Annual Crop Land', 'Forest']),
])
def test_coop_split_reader(tmp_path, dataset_type, image_dir, split_file,
                           classes):
    splits = fake_coop(tmp_path, image_dir, split_file, classes,
                       dict(train=6, val=2, test=3))
    for split, n in (('train', 6), ('val', 2), ('test', 3)):
        data = DATASETS.build(
            dict(type=dataset_type, data_root=str(tmp_path), split=split))
        assert len(data) == n * len(classes)
        assert data.metainfo['classes'] == tuple(classes)
        for i, (rel, label, _) in enumerate(splits[split]):
            info = data.get_data_info(i)
            assert info['img_path'] == str(tmp_path / image_dir / rel)
            assert info['gt_label'] == label
    train = DATASETS.build(dict(type=dataset_type, data_root=str(tmp_path)))
    a = FewShotDataset(train, num_shots=2, seed=1)
    b = FewShotDataset(
        DATASETS.build(dict(type=dataset_type, data_root=str(tmp_path))),
        num_shots=2,
        seed=1)
    paths = [a.get_data_info(i)['img_path'] for i in range(len(a))]
    assert paths == [b.get_data_info(i)['img_path'] for i in range(len(b))]
    assert np.bincount(a.get_gt_labels()).tolist() == [2] * len(classes)


def test_fgvc_aircraft_reader(tmp_path):
    base = tmp_path / 'fgvc_aircraft'
    variants = ['707-320', 'A300B4', 'Cessna 172']
    base.mkdir()
    (base / 'variants.txt').write_text('\n'.join(variants) + '\n')
    for split, ids in (('train', range(0, 6)), ('val', range(6, 9)),
                       ('test', range(9, 12))):
        lines = [f'{1000000 + i} {variants[i % 3]}' for i in ids]
        (base / f'images_variant_{split}.txt').write_text('\n'.join(lines))
        for i in ids:
            write_image(base / 'images' / f'{1000000 + i}.jpg')
    data = DATASETS.build(
        dict(type='CoOpFGVCAircraft', data_root=str(tmp_path), split='val'))
    assert data.metainfo['classes'] == tuple(variants)
    assert [data.get_data_info(i)['gt_label'] for i in range(3)] == [0, 1, 2]
    assert data.get_data_info(2)['img_path'] == str(base / 'images' /
                                                    '1000008.jpg')
    (base / 'images_variant_test.txt').write_text('1000009 Unknown Jet\n')
    with pytest.raises(ValueError, match="variant 'Unknown Jet' is not in"):
        DATASETS.build(
            dict(
                type='CoOpFGVCAircraft', data_root=str(tmp_path),
                split='test'))


def test_missing_split_file_and_image_name_path_and_layout(tmp_path):
    with pytest.raises(
            FileNotFoundError,
            match=r'split_zhou_DescribableTextures\.json.*'
            r'Expected layout'):
        DATASETS.build(dict(type='CoOpDTD', data_root=str(tmp_path)))
    fake_coop(tmp_path, 'dtd/images',
              'dtd/split_zhou_DescribableTextures.json', ['banded', 'blotchy'],
              dict(train=2, val=1, test=1))
    (tmp_path / 'dtd/images/banded/train_0.jpg').unlink()
    with pytest.raises(
            FileNotFoundError,
            match=r'(?s)banded/train_0\.jpg.*'
            r'listed in the split is missing.*dtd/images'):
        DATASETS.build(dict(type='CoOpDTD', data_root=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match='variants.txt'):
        DATASETS.build(dict(type='CoOpFGVCAircraft', data_root=str(tmp_path)))


def test_custom_dataset_example_end_to_end(tiny_clip, image_folders, tmp_path):
    config = CONFIGS / 'custom' / 'tip_my_dataset_16shot.py'
    assert len(config.read_text().splitlines()) <= 15
    root = str(image_folders)
    model = [
        f'model.{tower}.{k}={v}' for tower in ('backbone', 'text_encoder')
        for k, v in tiny_clip.items()
    ]
    output = run_tool(
        python_tool('test.py', str(config), '--work-dir', str(tmp_path),
                    '--cfg-options', *model, 'model.head.num_classes=3',
                    'fewshot_dataloader.dataset.num_shots=4',
                    f'fewshot_dataloader.dataset.dataset.data_root={root}',
                    f'val_dataloader.dataset.data_root={root}',
                    f'test_dataloader.dataset.data_root={root}',
                    'fewshot_dataloader.num_workers=0',
                    'val_dataloader.num_workers=0',
                    'test_dataloader.num_workers=0'))
    assert 'Building zero-shot weights for 3 classes' in output
    # 4 shots x 3 classes, each with the base schedule's 10 augmented views
    assert ('TipAdapterHead fitted on 12 few-shot images x 10 augmented '
            'views') in output
    assert 'accuracy/top1' in output
