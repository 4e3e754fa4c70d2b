"""The feature store: round trips, write-once entries, and bad files
(truncated, damaged, from another encoder, written twice at once) detected,
named, set aside and never used."""
import json
import logging
import multiprocessing as mp
import os
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, read_count_log, tiny_config

from tip_adapter_mm.engine import FeatureStore, StoredFeaturesError
from tip_adapter_mm.engine.feature_store import FORMAT, read_features
from tip_adapter_mm.structures import EncodedFeatures

DESCRIPTION = dict(kind='features', encoder=dict(backbone='A'), seed=1)
OTHER_ENCODER = dict(DESCRIPTION, encoder=dict(backbone='B'))


def features(seed=0, num=7, dims=(5, 3)):
    g = torch.Generator().manual_seed(seed)
    return EncodedFeatures(
        tuple(torch.randn(num, d, generator=g) for d in dims),
        torch.randint(0, 4, (num, ), generator=g))


def assert_same(a, b):
    assert torch.equal(a.labels, b.labels)
    assert len(a.feats) == len(b.feats)
    for x, y in zip(a.feats, b.feats):
        assert torch.equal(x, y)


def test_round_trip_and_description(tmp_path):
    store = FeatureStore(str(tmp_path / 'store'))
    data = features()
    path = store.save('test', DESCRIPTION, data)
    assert path == store.path('test', DESCRIPTION)
    assert os.path.basename(path) == f'test_{store.key(DESCRIPTION)}.pth'
    assert_same(store.load('test', DESCRIPTION), data)
    assert_same(read_features(path), data)
    sidecar = json.loads(open(path[:-4] + '.json').read())
    assert sidecar == dict(DESCRIPTION, format=FORMAT)
    # Another description is another entry.
    assert store.path('test', OTHER_ENCODER) != path
    assert store.load('test', OTHER_ENCODER) is None


def test_key_ignores_dict_order_but_not_values():
    a = dict(x=1, y=dict(p=2, q=3))
    b = dict(y=dict(q=3, p=2), x=1)
    assert FeatureStore.key(a) == FeatureStore.key(b)
    assert FeatureStore.key(a) != FeatureStore.key(dict(a, x=2))


def test_entries_are_written_once(tmp_path):
    store = FeatureStore(str(tmp_path))
    first, second = features(0), features(1)
    path = store.save('val', DESCRIPTION, first)
    assert store.save('val', DESCRIPTION, second) == path
    assert_same(store.load('val', DESCRIPTION), first)
    assert not [p for p in os.listdir(tmp_path) if '.tmp' in p]


def _rejected(path):
    return [p for p in os.listdir(os.path.dirname(path))
            if p.startswith(os.path.basename(path) + '.rejected')]


def test_truncated_file_is_named_set_aside_and_not_used(tmp_path):
    store = FeatureStore(str(tmp_path))
    path = store.save('test', DESCRIPTION, features())
    size = os.path.getsize(path)
    with open(path, 'r+b') as f:
        f.truncate(size // 2)
    truncated = open(path, 'rb').read()
    with pytest.raises(StoredFeaturesError, match='truncated') as err:
        read_features(path, DESCRIPTION)
    assert path in str(err.value)
    assert store.load('test', DESCRIPTION) is None
    assert not os.path.exists(path)
    aside = _rejected(path)
    assert len(aside) == 1  # kept, not deleted
    assert open(tmp_path / aside[0], 'rb').read() == truncated
    # Encoding again writes a good entry in its place.
    store.save('test', DESCRIPTION, features(2))
    assert_same(store.load('test', DESCRIPTION), features(2))


def test_damaged_tensor_bytes_fail_the_digest(tmp_path):
    store = FeatureStore(str(tmp_path))
    data = features(num=50, dims=(64, ))
    path = store.save('test', DESCRIPTION, data)
    raw = bytearray(open(path, 'rb').read())
    # Flip one byte inside the float data of the features (their bytes are
    # stored uncompressed in torch's zip archive).
    needle = data.feats[0][10].numpy().tobytes()
    at = raw.find(needle)
    assert at > 0
    raw[at + 1] ^= 0xFF
    open(path, 'wb').write(bytes(raw))
    with pytest.raises(StoredFeaturesError) as err:
        read_features(path, DESCRIPTION)
    assert path in str(err.value)
    assert store.load('test', DESCRIPTION) is None
    assert len(_rejected(path)) == 1


def test_file_of_another_encoder_is_refused(tmp_path):
    store = FeatureStore(str(tmp_path))
    other = store.save('test', OTHER_ENCODER, features(3))
    # A file of encoder B where encoder A's entry should be.
    path = store.path('test', DESCRIPTION)
    os.link(other, path)
    with pytest.raises(StoredFeaturesError,
                       match="another encoder.*'encoder'") as err:
        read_features(path, DESCRIPTION)
    assert path in str(err.value) and '"B"' in str(err.value)
    assert store.load('test', DESCRIPTION) is None
    assert len(_rejected(path)) == 1
    # Encoder B's own entry is untouched.
    assert_same(store.load('test', OTHER_ENCODER), features(3))


def test_foreign_files_are_refused(tmp_path):
    plain = tmp_path / 'plain.pth'
    torch.save(dict(feats=torch.zeros(2, 3), labels=torch.zeros(2)), plain)
    with pytest.raises(StoredFeaturesError, match='layout'):
        read_features(str(plain))
    text = tmp_path / 'text.pth'
    text.write_text('not a torch file')
    with pytest.raises(StoredFeaturesError, match=str(text)):
        read_features(str(text))


def _locked_writer(root, started, encodes, seed):
    """A process that encodes an entry only if it is not there, under the
    entry's lock (as FewShotBuilder does)."""
    store = FeatureStore(root)
    started.wait()
    with store.lock('test', DESCRIPTION):
        if store.load('test', DESCRIPTION) is None:
            encodes.put(seed)
            time.sleep(0.5)  # encoding takes a while
            store.save('test', DESCRIPTION, features(seed))


def test_two_processes_asking_for_one_entry_encode_it_once(tmp_path):
    ctx = mp.get_context('spawn')
    started, encodes = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_locked_writer,
                    args=(str(tmp_path), started, encodes, seed))
        for seed in (10, 11)
    ]
    for p in procs:
        p.start()
    started.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    winners = []
    while not encodes.empty():
        winners.append(encodes.get())
    assert len(winners) == 1
    assert_same(FeatureStore(str(tmp_path)).load('test', DESCRIPTION),
                features(winners[0]))


def test_two_runs_at_once_share_the_test_features(tiny_clip, image_folders,
                                                  counting_plugin, tmp_path):
    """Two tools/test.py processes on one feature store, started together:
    the test images are encoded once in all (the second run waits for the
    first one's entry and reads it), and both report the same accuracy."""
    count_file = tmp_path / 'encoded.txt'
    extra = f"""
custom_imports = dict(imports=['tip_adapter_mm', 'counting_backbone'])
model['backbone'] = dict(type='CountingOpenCLIPVisualBackbone',
                         count_file={str(count_file)!r}, **clip)
few_shot_cfg = dict(augment_epoch=2, feature_dir={str(tmp_path / 'store')!r})
"""
    config = tiny_config(tmp_path / 'tip.py', tiny_clip, image_folders,
                         extra=extra)
    env = dict(os.environ, OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join([str(REPO), str(counting_plugin)]))
    procs = [
        subprocess.Popen(
            [sys.executable, 'tools/test.py', str(config), '--work-dir',
             str(tmp_path / f'work{i}')], cwd=REPO, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-4000:]
    top1 = [out.split('accuracy/top1: ')[-1].split()[0] for out in outputs]
    assert top1[0] == top1[1]
    encoded = read_count_log(count_file)
    # 15 test + 12 val images and 2 views of 3 x 4 shots: once each.
    assert len(encoded) == 15 + 12 + 2 * 12
    store = sorted(os.listdir(tmp_path / 'store'))
    assert [p.split('_')[0] for p in store if p.endswith('.pth')] == [
        'support', 'test', 'val'
    ]


# -- reading through memory mapping ------------------------------------------
def _mapped_files(tensor):
    """The files of /proc/self/maps whose mapping holds ``tensor``'s data."""
    ptr, files = tensor.data_ptr(), []
    with open('/proc/self/maps') as f:
        for line in f:
            fields = line.split()
            start, end = (int(a, 16) for a in fields[0].split('-'))
            if start <= ptr < end and len(fields) >= 6:
                files.append(fields[5])
    return files


@pytest.mark.skipif(not sys.platform.startswith('linux'),
                    reason='reads /proc/self/maps')
def test_mmap_read_equals_a_read_and_maps_the_file(tmp_path):
    store = FeatureStore(str(tmp_path))
    data = features(num=300, dims=(64, 32))
    path = store.save('test', DESCRIPTION, data)
    mapped = read_features(path, DESCRIPTION, mmap=True)
    assert_same(mapped, read_features(path, DESCRIPTION))
    assert_same(mapped, data)
    assert_same(store.load('test', DESCRIPTION, mmap=True), data)
    # The tensors are views of the file's pages, not copies.
    for tensor in mapped.feats + (mapped.labels, ):
        assert _mapped_files(tensor) == [path]
    for tensor in read_features(path).feats:
        assert _mapped_files(tensor) != [path]


def test_mmap_read_rejects_damaged_tensor_bytes(tmp_path):
    store = FeatureStore(str(tmp_path))
    data = features(num=50, dims=(64, ))
    path = store.save('test', DESCRIPTION, data)
    raw = bytearray(open(path, 'rb').read())
    at = raw.find(data.feats[0][33].numpy().tobytes())
    assert at > 0
    raw[at + 2] ^= 0x01
    open(path, 'wb').write(bytes(raw))
    with pytest.raises(StoredFeaturesError, match='digest') as err:
        read_features(path, DESCRIPTION, mmap=True)
    assert path in str(err.value)
    assert store.load('test', DESCRIPTION, mmap=True) is None
    assert len(_rejected(path)) == 1


def test_mmap_read_names_a_truncated_file(tmp_path):
    store = FeatureStore(str(tmp_path))
    path = store.save('test', DESCRIPTION, features(num=100))
    with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) - 100)
    with pytest.raises(StoredFeaturesError, match='truncated') as err:
        read_features(path, DESCRIPTION, mmap=True)
    assert path in str(err.value)


def test_unmappable_file_is_read_with_a_note(tmp_path, monkeypatch):
    """torch's old (non-zip) format cannot be memory-mapped: the entry is
    read instead, verified as usual, and a warning names the file."""
    from tip_adapter_mm.engine import feature_store
    notes = []
    monkeypatch.setattr(feature_store, 'print_log',
                        lambda msg, **kwargs: notes.append((msg, kwargs)))
    data = features(num=20)
    path = str(tmp_path / 'old_format.pth')
    torch.save(
        dict(format=FORMAT,
             description=feature_store.description_text(DESCRIPTION),
             digest=feature_store.tensor_digest(data), labels=data.labels,
             feats=list(data.feats)), path,
        _use_new_zipfile_serialization=False)
    assert_same(read_features(path, DESCRIPTION, mmap=True), data)
    assert len(notes) == 1
    assert f'{path!r} could not be memory-mapped' in notes[0][0]
    assert notes[0][1]['level'] == logging.WARNING
    # A plain read of the same file says nothing.
    assert_same(read_features(path, DESCRIPTION), data)
    assert len(notes) == 1
