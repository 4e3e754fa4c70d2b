"""tools/dataset_converters/prepare_dataset.py with a fake download source
(generated images in torchvision's layout; no network): images moved where
the configs read them, CoOp's split file copied and checked, or a seeded
split of our own with a note that it is not the papers'."""
import importlib.util
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets
from conftest import REPO
from PIL import Image

import tip_adapter_mm  # noqa: F401
from mmpretrain.registry import DATASETS


def load_tool():
    path = REPO / 'tools/dataset_converters/prepare_dataset.py'
    spec = importlib.util.spec_from_file_location('prepare_dataset', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = load_tool()
EUROSAT = ('AnnualCrop', 'Forest', 'River')
PER_CLASS = 10


def write_jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (8, 8, 3))
    Image.fromarray(pixels.astype(np.uint8)).save(path)


class FakeSource:
    """Writes ``PER_CLASS`` images of each class in torchvision's layout of
    the dataset; counts its calls."""

    def __init__(self, classes=EUROSAT):
        self.classes = classes
        self.calls = []

    def __call__(self, spec, root: Path) -> None:
        self.calls.append(spec.name)
        base = root / spec.downloaded
        for c, name in enumerate(self.classes):
            for i in range(PER_CLASS):
                if spec.name == 'fgvc_aircraft':
                    path = base / 'images' / f'{c}{i:04d}.jpg'
                elif spec.name == 'oxford_pets':
                    path = base / f'{name}_{i + 1}.jpg'
                else:  # a folder per class (EuroSAT: <cls>/<cls>_<i>.jpg)
                    path = base / name / f'{name}_{i + 1}.jpg'
                write_jpeg(path, seed=c * 100 + i)
        if spec.name == 'fgvc_aircraft':
            (base / 'variants.txt').write_text('\n'.join(self.classes))
            for s, split in enumerate(('train', 'val', 'test')):
                lines = [f'{c}{i:04d} {name}'
                         for c, name in enumerate(self.classes)
                         for i in range(PER_CLASS) if i % 3 == s]
                (base / f'images_variant_{split}.txt').write_text(
                    '\n'.join(lines))


def refuse(spec, root):
    raise AssertionError(f'{spec.name} should not be downloaded')


def test_the_fake_layout_is_torchvisions(tmp_path):
    """What the fake writes is what torchvision's class reads (so the moved
    folder is the one torchvision's download leaves)."""
    FakeSource()(tool.SPECS['eurosat'], tmp_path)
    dataset = torchvision.datasets.EuroSAT(str(tmp_path), download=False)
    assert dataset.classes == sorted(EUROSAT)
    assert len(dataset) == len(EUROSAT) * PER_CLASS


def test_own_split_is_seeded_readable_and_flagged(tmp_path):
    source, lines = FakeSource(), []
    prepared = tool.prepare('eurosat', str(tmp_path), seed=1,
                            source=source, log=lines.append)
    assert source.calls == ['eurosat']
    assert prepared.split_origin == 'own'
    assert prepared.image_dir == tmp_path / 'eurosat/2750'
    assert prepared.split_file == (tmp_path /
                                   'eurosat/split_zhou_EuroSAT.json')
    splits = json.loads(prepared.split_file.read_text())
    # Every image once; per class 5 train, 2 val, 3 test; labels number the
    # sorted class names.
    listed = [p for s in splits.values() for p, _, _ in s]
    on_disk = sorted(p.relative_to(prepared.image_dir).as_posix()
                     for p in prepared.image_dir.rglob('*.jpg'))
    assert sorted(listed) == on_disk and len(on_disk) == 30
    # EuroSAT's folder names, words apart: the class names of the split.
    readable = {'AnnualCrop': 'Annual Crop', 'Forest': 'Forest',
                'River': 'River'}
    for split, n in (('train', 5), ('val', 2), ('test', 3)):
        for label, name in enumerate(sorted(EUROSAT)):
            items = [p for p, lbl, c in splits[split] if lbl == label]
            assert len(items) == n
            assert all(c == readable[name] and p.startswith(f'{name}/')
                       for p, lbl, c in splits[split] if lbl == label)
    # Said plainly, in the log and beside the data.
    note = (tmp_path / 'eurosat' / tool.NOTE_FILE).read_text()
    assert 'NOT comparable' in note
    assert any('not comparable with the papers' in line for line in lines)
    # The configs' dataset class reads it.
    train = DATASETS.build(dict(type='CoOpEuroSAT', data_root=str(tmp_path),
                                split='train'))
    assert len(train) == 15 and train.metainfo['classes'] == (
        'Annual Crop', 'Forest', 'River')
    # Seeded: the same seed gives the same split, another seed another.
    paths = tool.list_images(prepared.image_dir)
    again = tool.make_split(paths, tool._satellite_class, seed=1)
    assert again == splits
    assert tool.make_split(paths, tool._satellite_class, seed=2) != splits


def test_a_second_run_downloads_nothing_and_keeps_the_split(tmp_path):
    tool.prepare('eurosat', str(tmp_path), source=FakeSource(),
                 log=lambda _: None)
    split = tmp_path / 'eurosat/split_zhou_EuroSAT.json'
    before = split.read_bytes()
    lines = []
    prepared = tool.prepare('eurosat', str(tmp_path), seed=5, source=refuse,
                            log=lines.append)
    assert prepared.split_origin == 'existing'
    assert split.read_bytes() == before
    assert any('NOT CoOp' in line for line in lines)


def coop_split(image_dir: Path) -> dict:
    paths = tool.list_images(image_dir)
    return {'train': [[p, EUROSAT.index(p.split('/')[0]), 'x'] for p in
                      paths[::2]],
            'val': [[paths[1], 0, 'x']], 'test': [[paths[3], 0, 'x']]}


def test_coop_split_file_is_copied_never_overwritten(tmp_path):
    data = tmp_path / 'data'
    # Images in place, then CoOp's split given.
    tool.place_images(tool.SPECS['eurosat'], data, FakeSource(),
                      lambda _: None)
    given = tmp_path / 'split_zhou_EuroSAT.json'
    given.write_text(json.dumps(coop_split(data / 'eurosat/2750')))
    prepared = tool.prepare('eurosat', str(data), split_file=str(given),
                            source=refuse, log=lambda _: None)
    assert prepared.split_origin == 'coop'
    assert prepared.split_file.read_bytes() == given.read_bytes()
    assert not (data / 'eurosat' / tool.NOTE_FILE).exists()
    # Another file is refused: the one there is not overwritten.
    other = tmp_path / 'other.json'
    other.write_text(json.dumps(dict(coop_split(data / 'eurosat/2750'),
                                     val=[])))
    with pytest.raises(FileExistsError, match='not overwritten'):
        tool.prepare('eurosat', str(data), split_file=str(other),
                     source=refuse, log=lambda _: None)
    assert prepared.split_file.read_bytes() == given.read_bytes()


def test_a_split_file_of_other_images_is_refused_naming_it(tmp_path):
    data = tmp_path / 'data'
    wrong = tmp_path / 'split.json'
    wrong.write_text(json.dumps({'train': [['Forest/nope.jpg', 0, 'x']],
                                 'val': [], 'test': []}))
    with pytest.raises(FileNotFoundError,
                       match=r'split.json lists 1 image.*Forest/nope.jpg'):
        tool.prepare('eurosat', str(data), split_file=str(wrong),
                     source=FakeSource(), log=lambda _: None)


def test_flowers_needs_coops_file_and_says_so_before_downloading(tmp_path):
    with pytest.raises(FileNotFoundError,
                       match='split_zhou_OxfordFlowers.json with '
                       '--split-file'):
        tool.prepare('flowers102', str(tmp_path), source=refuse)


def test_fgvc_aircraft_keeps_its_official_split(tmp_path):
    classes = ('707-320', 'A300B4', 'BAE 146-200')
    prepared = tool.prepare('fgvc_aircraft', str(tmp_path),
                            source=FakeSource(classes), log=lambda _: None)
    assert prepared.split_origin == 'official'
    val = DATASETS.build(dict(type='CoOpFGVCAircraft',
                              data_root=str(tmp_path), split='val'))
    assert val.metainfo['classes'] == classes
    assert len(val) == 3 * len(range(1, PER_CLASS, 3))


def test_a_download_in_another_layout_is_an_error_naming_the_folder(
        tmp_path):
    with pytest.raises(FileNotFoundError, match=r'eurosat/2750'):
        tool.prepare('eurosat', str(tmp_path), source=lambda s, r: None,
                     log=lambda _: None)


def test_class_names_for_a_split_of_our_own():
    assert tool._pet_breed('american_bulldog_12.jpg') == 'american_bulldog'
    assert tool._sun_category('b/bakery/shop/sun_x.jpg') == 'bakery shop'
    split = tool.make_split(
        [f'{c}/{i}.jpg' for c in ('BACKGROUND_Google', 'Faces_easy', 'ant')
         for i in range(4)], tool._class_folder, seed=0,
        ignored=tool.SPECS['caltech101'].ignored_classes)
    assert {c for s in split.values() for _, _, c in s} == {'ant'}


@pytest.mark.parametrize('name', sorted(tool.SPECS))
def test_the_default_source_calls_torchvision_as_it_takes_it(name):
    """Every spec names a torchvision class that accepts its arguments and
    a dataset class (with the image folder) of ours."""
    spec = tool.SPECS[name]
    cls = getattr(torchvision.datasets, spec.torchvision_class)
    inspect.signature(cls).bind(root='data', download=True,
                                **dict(spec.torchvision_kwargs))
    assert spec.dataset_class().__name__ == spec.dataset_type


def test_command_line(tmp_path, capsys):
    tool.main(['eurosat', '--data-root', str(tmp_path), '--seed', '3'],
              source=FakeSource())
    out = capsys.readouterr().out
    assert 'python tools/test.py configs/tip_eurosat_16shot.py' in out
    assert f'test_dataloader.dataset.data_root={tmp_path}' in out
    assert (tmp_path / 'eurosat/split_zhou_EuroSAT.json').is_file()


def test_source_from_the_command_line(tmp_path, monkeypatch):
    (tmp_path / 'my_mirror.py').write_text(
        'CALLS = []\n\ndef copy(spec, root):\n    CALLS.append(spec.name)\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    source = tool.load_source('my_mirror:copy')
    source(tool.SPECS['dtd'], tmp_path)
    assert __import__('my_mirror').CALLS == ['dtd']
    with pytest.raises(ValueError, match="'my_mirror': expected MODULE"):
        tool.load_source('my_mirror')
    with pytest.raises(ValueError, match="my_mirror.py has no function "
                       "'paste'"):
        tool.load_source('my_mirror:paste')
    with pytest.raises(ValueError, match="cannot import 'no_such_mirror'"):
        tool.load_source('no_such_mirror:copy')
