"""tools/split_file.py end to end: export a config's shots, refuse to
overwrite another file, convert a CoOp/Dassl pickle against a config."""
import json
import os
import pickle
import sys
import types

import pytest
from conftest import python_tool, run_tool, tiny_config

from mmpretrain.registry import DATASETS
from tip_adapter_mm.datasets import FewShotDataset, load_split_file


def train_folder(image_folders):
    return DATASETS.build(
        dict(type='CustomDataset', data_root=str(image_folders),
             data_prefix='train'))


def relative_shots(dataset, root):
    """``[[path relative to root/train, label], ...]`` of a subset."""
    out = []
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        rel = os.path.relpath(info['img_path'], root / 'train')
        out.append([rel.replace(os.sep, '/'), int(info['gt_label'])])
    return out


@pytest.fixture(scope='module')
def config(tiny_clip, image_folders, tmp_path_factory):
    root = tmp_path_factory.mktemp('split_tool')
    return tiny_config(root / 'tiny_tip.py', tiny_clip, image_folders,
                       extra="dataset_name = 'colours'\n")


def test_export_writes_the_shots_of_shots_and_seed(config, image_folders,
                                                   tmp_path):
    out = tmp_path / 'colours_2shot_seed5.json'
    output = run_tool(python_tool('split_file.py', 'export', str(config),
                                  str(out), '--shots', '2', '--seed', '5'))
    assert 'Wrote 6 shots (2 per class, seed 5, 3 classes)' in output
    data = json.loads(out.read_text())
    expected = FewShotDataset(train_folder(image_folders), 2, seed=5)
    assert data['samples'] == relative_shots(expected, image_folders)
    assert (data['num_shots'], data['seed']) == (2, 5)
    assert data['dataset_name'] == 'colours'
    assert data['sha256'] in output
    # the file reproduces the shots through the config key
    read = FewShotDataset(train_folder(image_folders), split_file=str(out))
    assert relative_shots(read, image_folders) == data['samples']

    # the same shots again: fine; others (seed 6 through --cfg-options):
    # refused, the file untouched
    before = out.read_text()
    failed = run_tool(
        python_tool('split_file.py', 'export', str(config), str(out),
                    '--shots', '2', '--cfg-options',
                    'fewshot_dataloader.dataset.seed=6'), expect_rc=1)
    assert f'{out} exists with different shots' in failed
    assert out.read_text() == before


def test_convert_coop_pickle(config, image_folders, tmp_path, monkeypatch):
    names = ['dassl', 'dassl.data', 'dassl.data.datasets',
             'dassl.data.datasets.base_dataset']
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))

    class Datum:

        def __init__(self, impath, label, classname):
            self._impath = impath
            self._label = label
            self._domain = 0
            self._classname = classname

    Datum.__module__, Datum.__qualname__ = names[-1], 'Datum'
    sys.modules[names[-1]].Datum = Datum
    picks = [('red_apple/004.jpg', 2, 'red_apple'),
             ('blue_sky/010.jpg', 0, 'blue_sky'),
             ('green_leaf/003.jpg', 1, 'green_leaf')]
    pkl = tmp_path / 'split_fewshot' / 'shot_1-seed_2.pkl'
    pkl.parent.mkdir()
    with open(pkl, 'wb') as f:
        pickle.dump(
            dict(train=[Datum('/mnt/authors/data/colours/train/' + p, lbl,
                              name) for p, lbl, name in picks],
                 val=[]), f, protocol=pickle.HIGHEST_PROTOCOL)

    out = tmp_path / 'converted.json'
    output = run_tool(python_tool('split_file.py', 'convert', str(pkl),
                                  str(out), '--config', str(config)))
    assert 'Converted 3 shots' in output
    split = load_split_file(str(out))
    assert split.samples == [(p, lbl) for p, lbl, _ in picks]
    assert (split.num_shots, split.seed) == (1, 2)
    assert split.dataset_name == 'colours'
    read = FewShotDataset(train_folder(image_folders), num_shots=1, seed=2,
                          split_file=str(out))
    assert [r[0] for r in relative_shots(read, image_folders)] == [
        p for p, _, _ in picks]

    failed = run_tool(
        python_tool('split_file.py', 'convert', str(pkl),
                    str(tmp_path / 'x.json'), '--config', str(config),
                    '--seed', '3'), expect_rc=1)
    assert 'seed=3 was given but the file name shot_1-seed_2.pkl says 2' \
        in failed
