"""Tip-Adapter-F's stored views read through memory mapping: the dataset's
items are the stored rows, no copies are made, and two processes that read
one views file share its pages (memory accounting of
``/proc/self/smaps_rollup``, not timing)."""
import gc
import multiprocessing as mp
import sys
from pathlib import Path

import pytest
import torch
from mmengine.dataset import pseudo_collate

from tip_adapter_mm.datasets import CachedViewsDataset
from tip_adapter_mm.engine import FeatureStore
from tip_adapter_mm.models import FeatureOrImageDataPreprocessor
from tip_adapter_mm.structures import EncodedFeatures

LINUX = sys.platform.startswith('linux')
pytestmark = pytest.mark.skipif(
    not LINUX, reason='reads /proc/self/maps and /proc/self/smaps_rollup')


def write_views(root, views, images, dims, seed=0):
    """A views file written by the feature store: rows view-major, labels
    ``image % 4``; returns (path, the features written)."""
    g = torch.Generator().manual_seed(seed)
    feats = tuple(torch.randn(views * images, d, generator=g) for d in dims)
    labels = (torch.arange(images) % 4).repeat(views)
    data = EncodedFeatures(feats, labels)
    description = dict(kind='test_views', views=views, images=images,
                       dims=list(dims), seed=seed)
    return FeatureStore(str(root)).save('support_views', description,
                                        data), data


def mapping_of(tensor):
    """The file named by the /proc/self/maps line that holds the tensor's
    first byte, or None."""
    ptr = tensor.data_ptr()
    with open('/proc/self/maps') as f:
        for line in f:
            fields = line.split()
            start, end = (int(a, 16) for a in fields[0].split('-'))
            if start <= ptr < end:
                return fields[5] if len(fields) >= 6 else None
    return None


def test_items_are_the_stored_rows_and_views_of_the_mapped_file(tmp_path):
    path, data = write_views(tmp_path, views=3, images=10, dims=(16, 8))
    dataset = CachedViewsDataset(path, num_views=3, classes=['a', 'b'])
    assert (len(dataset), dataset.num_images) == (30, 10)
    # Read through memory mapping by default, and not copied since.
    for tensor in dataset.feats + (dataset.labels, ):
        assert mapping_of(tensor) == path
    for j in (0, 7, 10, 29):
        item = dataset[j]
        assert len(item['feats']) == 2
        for f, stored in zip(item['feats'], data.feats):
            assert torch.equal(f, stored[j])
            assert mapping_of(f) == path  # a view of the row
        assert item['data_samples'].gt_label.item() == j % 10 % 4
        assert item['data_samples'].sample_idx == j
    # A batch as the training loop builds it: stacked rows, in order.
    batch = pseudo_collate([dataset[j] for j in (4, 25, 13)])
    feats = FeatureOrImageDataPreprocessor()(batch, True)['feats']
    for f, stored in zip(feats, data.feats):
        assert torch.equal(f, stored[[4, 25, 13]])
    # mmap=False reads the same rows into the process.
    plain = CachedViewsDataset(path, num_views=3, mmap=False)
    for f, g in zip(plain.feats, dataset.feats):
        assert torch.equal(f, g) and mapping_of(f) != path


# -- two processes ------------------------------------------------------------
def memory():
    """Rss, Pss and private bytes (Private_Clean + Private_Dirty) of this
    process, from /proc/self/smaps_rollup."""
    kb = {}
    with open('/proc/self/smaps_rollup') as f:
        for line in f:
            key, _, rest = line.partition(':')
            if rest.strip().endswith('kB'):
                kb[key] = int(rest.split()[0])
    return dict(rss=kb['Rss'] * 1024, pss=kb['Pss'] * 1024,
                private=(kb['Private_Clean'] + kb['Private_Dirty']) * 1024)


def _reader(path, views, barrier, results):
    """Read the views file twice, mapped then not, and report how this
    process's memory grew while both processes held it."""
    torch.set_num_threads(1)
    # A first read, not measured: what it imports or allocates once.
    CachedViewsDataset(path, num_views=views)
    out = {}
    for mmap in (True, False):
        gc.collect()
        barrier.wait()
        before = memory()
        dataset = CachedViewsDataset(path, num_views=views, mmap=mmap)
        total = float(sum(f.sum(dtype=torch.float64) for f in dataset.feats))
        barrier.wait()  # both processes hold the dataset
        after = memory()
        barrier.wait()  # both have measured
        out[mmap] = dict({k: after[k] - before[k] for k in after},
                         total=total)
        del dataset
    results.put(out)


def test_two_processes_share_the_mapped_views(tmp_path):
    views, images, dim = 10, 1000, 1024  # 41 MB of features
    path, data = write_views(tmp_path, views, images, (dim, ))
    size = data.feats[0].numel() * 4
    expected_total = float(data.feats[0].sum(dtype=torch.float64))
    del data
    ctx = mp.get_context('spawn')
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_reader, args=(path, views, barrier, results))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    out = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    for grown in out:
        mapped, read = grown[True], grown[False]
        assert mapped['total'] == pytest.approx(expected_total, rel=1e-9)
        assert read['total'] == pytest.approx(expected_total, rel=1e-9)
        # Both hold every page of the file (the digest read them) ...
        assert mapped['rss'] > 0.9 * size
        # ... but mapped, the pages are shared: nearly nothing private,
        # and half of them counted in each process's proportional share.
        assert mapped['private'] < 0.2 * size
        assert 0.35 * size < mapped['pss'] < 0.7 * size
        # Read, each process holds a private copy.
        assert read['private'] > 0.9 * size
        assert read['pss'] > 0.9 * size


def test_benchmark_memory_and_summary():
    """benchmarks/bench_shared_views.py: its reading of smaps_rollup and its
    totals and ratios, against this file's reader and hand sums (the full
    benchmark spawns six processes: run it by hand)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] /
                           'benchmarks'))
    try:
        import bench_shared_views as bench
    finally:
        sys.path.pop(0)
    ours, theirs = memory(), bench.memory()
    assert abs(theirs['Uss'] - ours['private']) < 16 * 2**20
    assert abs(theirs['Pss'] - ours['pss']) < 16 * 2**20
    assert theirs['VmHWM'] >= theirs['Rss'] > 0

    def run(mmap, processes, rank, uss, pss):
        return dict(mmap=mmap, processes=processes, rank=rank, uss=uss,
                    pss=pss, anonymous=uss if not mmap else 1,
                    peak_rss=100)

    runs = [run(False, 1, 0, 100, 100), run(False, 2, 0, 100, 100),
            run(False, 2, 1, 100, 100), run(True, 1, 0, 100, 100),
            run(True, 2, 0, 2, 50), run(True, 2, 1, 2, 50)]
    summary = bench.summarise(runs, 200 * 2**20)
    assert summary['file_mib'] == 200
    ratios = summary['ratios']
    assert ratios['read'] == dict(total_uss_2_over_1=2.0,
                                  total_pss_2_over_1=2.0,
                                  pss_per_rank_2_over_1=1.0)
    assert ratios['mmap'] == dict(total_uss_2_over_1=0.04,
                                  total_pss_2_over_1=1.0,
                                  pss_per_rank_2_over_1=0.5)
    two = [g for g in summary['groups'] if g['mmap'] and g['processes'] == 2]
    assert two[0]['total_anonymous'] == 2 and two[0]['pss_per_rank'] == 50
