"""The sweep's table says in how many seeds the search declined the cache
(its search report's ``declined``)."""
import importlib.util
import json
import os
import time

from conftest import REPO


def load_sweep():
    spec = importlib.util.spec_from_file_location(
        'sweep_declined', str(REPO / 'tools' / 'sweep.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sweep = load_sweep()


def test_search_best_reads_declined_and_edges(tmp_path):
    start = time.time()
    run = tmp_path / '20260101_000000'
    run.mkdir()
    (run / 'hyperparameter_search.json').write_text(json.dumps(dict(
        best=dict(beta=0.1, alpha=0.0), accuracy=50.0, num_samples=12,
        zero_shot_accuracy=50.0, declined=True,
        edges=[dict(name='alpha', value=3.0, edge='upper')],
        kept=dict(alpha=0.0))))
    os.utime(run / 'hyperparameter_search.json')
    found = sweep.search_best(str(tmp_path), start - 1)
    assert found['declined'] is True and found['zero_shot_top1'] == 50.0
    assert found['edges'][0]['name'] == 'alpha'
    assert found['kept'] == dict(alpha=0.0)


def test_table_marks_declined_seeds(tmp_path):
    row = ('dtd', 'RN50', 'Tip-Adapter', 'val')
    records = [
        dict(dataset='dtd', backbone='RN50', method='Tip-Adapter',
             protocol='val', shots=16, seed=seed, top1=60.0 + seed,
             search=dict(declined=seed == 1))
        for seed in (1, 2, 3)] + [
        dict(dataset='dtd', backbone='RN50', method='Tip-Adapter',
             protocol='val', shots=1, seed=1, top1=50.0,
             search=dict(declined=False))]
    counts = sweep.declined_counts(records)
    assert counts == {(row, 16): (1, 3), (row, 1): (0, 1)}
    table = {row: {1: sweep.Stat(50.0, None, 1),
                   16: sweep.Stat(62.0, 1.0, 3)}}
    md, _ = sweep.write_tables(table, [1, 16], str(tmp_path),
                               declined=counts)
    text = open(md).read()
    assert '| 50.00 ± n/a (1) | 62.00 ± 1.00 (3) declined 1/3 |' in text
    assert 'declined d/s' in text
