"""Split files: export/import round trips, reproducing another seed's shots,
damage and mismatch errors, CoOp/Dassl few-shot pickles, the feature-store
fingerprint."""
import hashlib
import json
import os
import pickle
import shutil
import sys
import types

import numpy as np
import pytest
from PIL import Image

from mmpretrain.registry import DATASETS
from tip_adapter_mm.datasets import FewShotDataset, HoldoutDataset
from tip_adapter_mm.datasets.split_files import (SplitFile, convert_coop_split,
                                                 load_split_file,
                                                 read_coop_fewshot_pickle,
                                                 save_split_file,
                                                 write_split_file)
from tip_adapter_mm.engine import dataset_fingerprint


def folder(root, prefix='train'):
    return DATASETS.build(
        dict(type='CustomDataset', data_root=str(root), data_prefix=prefix))


def shots(dataset):
    """``[(path relative to the train folder, label), ...]`` computed from
    the absolute paths, independently of the module."""
    prefix = dataset.dataset.data_prefix['img_path']
    out = []
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        rel = os.path.relpath(info['img_path'], prefix).replace(os.sep, '/')
        out.append((rel, int(info['gt_label'])))
    return out


def test_round_trip_identical_samples_on_another_root(image_folders,
                                                      tmp_path):
    drawn = FewShotDataset(folder(image_folders), num_shots=4, seed=1)
    path = tmp_path / 'shots.json'
    written = save_split_file(drawn, str(path), dataset_name='colours')
    # the data lives elsewhere on the other machine
    shutil.copytree(image_folders / 'train', tmp_path / 'moved' / 'train')
    read = FewShotDataset(folder(tmp_path / 'moved'), 4, 1,
                          split_file=str(path))
    assert shots(read) == shots(drawn)
    assert len(read) == 12 and np.bincount(read.get_gt_labels()).tolist() \
        == [4, 4, 4]
    assert all(
        read.get_data_info(i)['img_path'].startswith(str(tmp_path / 'moved'))
        for i in range(len(read)))
    assert [read.get_data_info(i)['sample_idx'] for i in range(12)] == list(
        range(12))
    # the file: header, samples in order, the digest of the canonical JSON
    data = json.loads(path.read_text())
    assert data['dataset_name'] == 'colours'
    assert data['dataset_type'] == 'CustomDataset'
    assert (data['num_shots'], data['seed']) == (4, 1)
    assert data['classes'] == ['blue_sky', 'green_leaf', 'red_apple']
    assert [tuple(s) for s in data['samples']] == shots(drawn)
    content = {k: v for k, v in data.items() if k != 'sha256'}
    assert data['sha256'] == hashlib.sha256(
        json.dumps(content, sort_keys=True, separators=(',', ':'))
        .encode()).hexdigest() == written.digest()
    # one sample per line: the file diffs well
    assert path.read_text().count('\n') > 12
    # exporting an imported set gives the same file
    save_split_file(read, str(path), dataset_name='colours')


def test_split_file_reproduces_another_seed(image_folders, tmp_path):
    base = folder(image_folders)
    seed3 = FewShotDataset(base, num_shots=3, seed=3)
    seed1 = FewShotDataset(base, num_shots=3, seed=1)
    assert shots(seed3) != shots(seed1)
    path = str(tmp_path / 'seed3.json')
    save_split_file(seed3, path)
    # None takes K and the seed from the file; equal numbers are accepted
    for k, s in ((None, None), (3, 3), (None, 3)):
        read = FewShotDataset(base, num_shots=k, seed=s, split_file=path)
        assert shots(read) == shots(seed3)
        assert (read.num_shots, read.seed) == (3, 3)
        assert np.array_equal(read.indices, seed3.indices)
    # the feature-store key covers the images: same shots, same key;
    # other shots, another key
    assert dataset_fingerprint(read) == dataset_fingerprint(seed3)
    assert dataset_fingerprint(read) != dataset_fingerprint(seed1)
    with pytest.raises(ValueError, match=r'seed=1 but the split file .*'
                       r'seed3\.json holds seed=3'):
        FewShotDataset(base, num_shots=3, seed=1, split_file=path)
    with pytest.raises(ValueError, match=r'num_shots=4 but .*num_shots=3'):
        FewShotDataset(base, num_shots=4, split_file=path)
    with pytest.raises(ValueError, match='num_shots must be >= 1'):
        FewShotDataset(base)


def test_file_order_is_kept(image_folders, tmp_path):
    """The shots are the file's samples in the file's order."""
    base = folder(image_folders)
    split = SplitFile(
        samples=[('red_apple/005.jpg', 2), ('blue_sky/000.jpg', 0),
                 ('green_leaf/011.jpg', 1)],
        classes=['blue_sky', 'green_leaf', 'red_apple'], num_shots=1,
        seed=7)
    path = str(tmp_path / 'hand.json')
    write_split_file(split, path)
    read = FewShotDataset(base, split_file=path)
    assert shots(read) == split.samples
    assert read.get_gt_labels().tolist() == [2, 0, 1]


def test_damaged_or_edited_file_is_named(image_folders, tmp_path):
    base = folder(image_folders)
    path = tmp_path / 'shots.json'
    save_split_file(FewShotDataset(base, 2, seed=1), str(path))
    text = path.read_text()
    first = json.loads(text)['samples'][0][0]
    edited = tmp_path / 'edited.json'
    edited.write_text(text.replace(first, 'red_apple/011.jpg', 1))
    with pytest.raises(ValueError, match=r'edited\.json is damaged or was '
                       r'edited: its content has SHA-256'):
        FewShotDataset(base, split_file=str(edited))
    truncated = tmp_path / 'truncated.json'
    truncated.write_text(text[:len(text) // 2])
    with pytest.raises(ValueError, match=r'truncated\.json is not valid '
                       'JSON'):
        load_split_file(str(truncated))
    with pytest.raises(FileNotFoundError, match=r'nowhere\.json'):
        FewShotDataset(base, split_file=str(tmp_path / 'nowhere.json'))


def test_save_never_overwrites_different_content(image_folders, tmp_path):
    base = folder(image_folders)
    path = tmp_path / 'shots.json'
    save_split_file(FewShotDataset(base, 2, seed=1), str(path))
    before = path.read_text()
    save_split_file(FewShotDataset(base, 2, seed=1), str(path))  # same
    with pytest.raises(FileExistsError, match=r'shots\.json exists with '
                       'different shots'):
        save_split_file(FewShotDataset(base, 2, seed=2), str(path))
    assert path.read_text() == before


def write(tmp_path, name, samples, classes=('blue_sky', 'green_leaf',
                                            'red_apple')):
    path = str(tmp_path / name)
    write_split_file(
        SplitFile(samples=samples, classes=list(classes), num_shots=1,
                  seed=1), path)
    return path


def test_mismatches_are_named(image_folders, tmp_path):
    base = folder(image_folders)
    missing = write(tmp_path, 'missing.json',
                    [('blue_sky/000.jpg', 0), ('red_apple/999.jpg', 2)])
    with pytest.raises(ValueError, match=r"missing\.json: image "
                       r"'red_apple/999\.jpg' is not in CustomDataset"):
        FewShotDataset(base, split_file=missing)
    wrong = write(tmp_path, 'label.json', [('red_apple/001.jpg', 1)])
    with pytest.raises(ValueError, match=r"image 'red_apple/001\.jpg' has "
                       r"label 1 \('green_leaf'\) in the split, 2 "
                       r"\('red_apple'\) in CustomDataset"):
        FewShotDataset(base, split_file=wrong)
    renamed = write(tmp_path, 'names.json', [('red_apple/001.jpg', 2)],
                    classes=('blue_sky', 'green_leaf', 'apple'))
    with pytest.raises(ValueError, match=r"names class 2 'apple', "
                       r"CustomDataset names it 'red_apple'"):
        FewShotDataset(base, split_file=renamed)
    fewer = write(tmp_path, 'fewer.json', [('red_apple/001.jpg', 1)],
                  classes=('blue_sky', 'red_apple'))
    with pytest.raises(ValueError, match='has 2 classes, CustomDataset has '
                       '3'):
        FewShotDataset(base, split_file=fewer)


def test_shot_in_holdout_is_refused(image_folders, tmp_path):
    base = folder(image_folders)
    holdout = dict(num_per_class=3, seed=0)
    held = HoldoutDataset(base, **holdout)
    info = held.get_data_info(0)
    rel = os.path.relpath(info['img_path'], base.data_prefix['img_path'])
    path = write(tmp_path, 'leak.json', [(rel, int(info['gt_label']))])
    with pytest.raises(ValueError, match=r'in the held-out validation '
                       'subset'):
        FewShotDataset(base, holdout=holdout, split_file=path)
    # a drawn set with the same holdout exports and imports fine
    drawn = FewShotDataset(base, 2, seed=4, holdout=holdout)
    save_split_file(drawn, str(tmp_path / 'ok.json'))
    read = FewShotDataset(base, holdout=holdout,
                          split_file=str(tmp_path / 'ok.json'))
    assert shots(read) == shots(drawn)


# -- CoOp / Dassl pickles ---------------------------------------------------
class DatumFields:
    """Dassl's Datum as its pickles store it (the attribute names of
    dassl/data/datasets/base_dataset.py)."""

    def __init__(self, impath='', label=0, domain=0, classname=''):
        self._impath = impath
        self._label = label
        self._domain = domain
        self._classname = classname


@pytest.fixture
def dassl_datum(monkeypatch):
    """A class ``Datum`` importable as
    ``dassl.data.datasets.base_dataset.Datum`` while the pickle is written
    (Dassl itself is not installed); the test removes the module before
    reading."""
    names = ['dassl', 'dassl.data', 'dassl.data.datasets',
             'dassl.data.datasets.base_dataset']
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    datum = type('Datum', (DatumFields, ), dict(__module__=names[-1]))
    sys.modules[names[-1]].Datum = datum
    return datum


def write_coop_pickle(path, train, val=(), protocol=pickle.HIGHEST_PROTOCOL):
    with open(path, 'wb') as f:
        pickle.dump(dict(train=list(train), val=list(val)), f,
                    protocol=protocol)


def fake_coop_dtd(root, classes=('banded', 'braided', 'bubbly'), n=5):
    """A CoOp DTD layout: images under dtd/images, the split JSON."""
    splits = dict(train=[], val=[], test=[])
    for label, name in enumerate(classes):
        for split in splits:
            for i in range(n):
                rel = f'{name}/{name}_{split}_{i}.jpg'
                (root / 'dtd/images' / name).mkdir(parents=True,
                                                   exist_ok=True)
                Image.fromarray(np.full((8, 8, 3), 9 * i, np.uint8)).save(
                    root / 'dtd/images' / rel)
                splits[split].append([rel, label, name])
    (root / 'dtd/split_zhou_DescribableTextures.json').write_text(
        json.dumps(splits))
    return splits


def test_coop_pickle_converted_and_used(tmp_path, dassl_datum):
    splits = fake_coop_dtd(tmp_path / 'data')
    author = '/home/author/DATA/dtd/images/'
    # Dassl repeats an image when a class has fewer than K: kept
    picks = [splits['train'][i] for i in (3, 3, 7, 5, 14, 11)]
    train = [dassl_datum(author + rel, label, 0, name)
             for rel, label, name in picks]
    val = [dassl_datum(author + splits['val'][0][0], 0, 0, 'banded')]
    pkl = tmp_path / 'shot_2-seed_3.pkl'
    write_coop_pickle(pkl, train, val)
    sys.modules.pop('dassl.data.datasets.base_dataset')  # no Dassl now

    data = read_coop_fewshot_pickle(str(pkl))
    assert [d.impath for d in data['train']] == [author + p[0]
                                                 for p in picks]
    assert [d.label for d in data['train']] == [p[1] for p in picks]
    assert [d.classname for d in data['val']] == ['banded']

    dtd = DATASETS.build(dict(type='CoOpDTD', data_root=str(tmp_path /
                                                            'data')))
    split = convert_coop_split(str(pkl), dtd, dataset_name='dtd')
    assert (split.num_shots, split.seed) == (2, 3)  # from the file name
    assert split.samples == [(p[0], p[1]) for p in picks]
    assert split.classes == ['banded', 'braided', 'bubbly']
    out = str(tmp_path / 'dtd_shot2_seed3.json')
    write_split_file(split, out)
    read = FewShotDataset(dtd, num_shots=2, seed=3, split_file=out)
    assert read.indices.tolist() == [3, 3, 7, 5, 14, 11]
    assert [read.get_data_info(i)['img_path'] for i in range(6)] == [
        str(tmp_path / 'data/dtd/images' / p[0]) for p in picks]
    assert read.get_gt_labels().tolist() == [p[1] for p in picks]


def test_coop_pickle_mismatches(tmp_path, dassl_datum):
    splits = fake_coop_dtd(tmp_path / 'data', n=2)
    dtd = DATASETS.build(dict(type='CoOpDTD', data_root=str(tmp_path /
                                                            'data')))
    rel, label, name = splits['train'][0]
    cases = {
        'shot_1-seed_1.pkl': ([dassl_datum('/x/dtd/images/banded/nope.jpg',
                                           0, 0, 'banded')],
                              r"image '/x/dtd/images/banded/nope\.jpg' "
                              r'matches no image of CoOpDTD'),
        'shot_1-seed_2.pkl': ([dassl_datum('/x/' + rel, 1, 0, 'braided')],
                              r"has label 1 \('braided'\) in the pickle, 0 "
                              r"\('banded'\) in CoOpDTD"),
        'shot_1-seed_3.pkl': ([dassl_datum('/x/' + rel, 0, 0, 'stripes')],
                              r"label 0 is called 'stripes' in the pickle, "
                              r"'banded' in CoOpDTD"),
    }
    for file_name, (train, message) in cases.items():
        write_coop_pickle(tmp_path / file_name, train)
    sys.modules.pop('dassl.data.datasets.base_dataset')
    for file_name, (_, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            convert_coop_split(str(tmp_path / file_name), dtd)
    # the class-name check can be turned off; labels still count
    split = convert_coop_split(str(tmp_path / 'shot_1-seed_3.pkl'), dtd,
                               check_class_names=False)
    assert split.samples == [(rel, 0)]
    with pytest.raises(ValueError, match=r'seed=5 was given but the file '
                       r'name shot_1-seed_3\.pkl says 3'):
        convert_coop_split(str(tmp_path / 'shot_1-seed_3.pkl'), dtd, seed=5)
    renamed = tmp_path / 'fewshot.pkl'
    shutil.copy(tmp_path / 'shot_1-seed_3.pkl', renamed)
    with pytest.raises(ValueError, match='give num_shots explicitly'):
        convert_coop_split(str(renamed), dtd, check_class_names=False)
    assert convert_coop_split(str(renamed), dtd, 1, 3,
                              check_class_names=False).seed == 3


class Payload:
    """Unpickling this would run ``os.system``."""

    def __reduce__(self):
        return (os.system, ('echo unpickled-code-ran',))


def test_pickle_naming_anything_but_datum_is_refused(tmp_path, capfd):
    path = tmp_path / 'shot_1-seed_1.pkl'
    with open(path, 'wb') as f:
        pickle.dump(dict(train=[Payload()]), f)
    with pytest.raises(ValueError, match=r'refusing to load '
                       r'(posix|nt|os)\.system'):
        read_coop_fewshot_pickle(str(path))
    assert 'unpickled-code-ran' not in capfd.readouterr().out
    with open(path, 'wb') as f:
        pickle.dump(dict(train=[np.int64(3)]), f)
    with pytest.raises(ValueError, match=r'refusing to load numpy'):
        read_coop_fewshot_pickle(str(path))
    with open(path, 'wb') as f:
        pickle.dump(dict(val=[]), f)
    with pytest.raises(ValueError, match=r"expected a dict with a 'train' "
                       'list'):
        read_coop_fewshot_pickle(str(path))
