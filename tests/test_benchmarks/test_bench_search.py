"""benchmarks/bench_search.py: a small run end to end (its loop agrees with
grid_search on every pair it times), and its reference pair against an
independent NumPy computation."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / 'benchmarks'
sys.path.insert(0, str(BENCH))
import bench_search  # noqa: E402


def test_small_run_end_to_end(tmp_path):
    out = tmp_path / 'search.json'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run(
        [sys.executable, str(BENCH / 'bench_search.py'), '--sizes',
         '60x48x6x16', '30x40x8x16', '--steps', '20', '6', '--loop-strides',
         '3', '2', '--repeats', '1', '--threads', '1', '--memory-bounds',
         '4096', '--out', str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result['machine']['cpu'] and result['machine']['device'] == 'cpu'
    first, second = result['sizes']
    assert first['size'] == dict(M=60, NK=48, N=6, D=16, K=8, grid=[20, 6])
    assert second['size']['K'] == 5
    for row in result['sizes']:
        assert row['loop_pairs_timed'] == 7 * 3
        assert row['pairs_with_different_counts'] == 0
        assert row['grid_search_median_seconds'] > 0
        assert row['loop_extrapolated_seconds'] > 0 and row['speedup'] > 0
        assert row['target'] is None and row['met'] is None
    if sys.platform.startswith('linux'):
        (memory, ) = result['memory']
        assert memory['max_elements'] == 4096
        assert memory['bound_bytes'] == 20 * 4096
        assert memory['peak_rss_increase_bytes'] >= 0
    assert '| 60 x 48 x 6 (16) | 20 x 6 |' in proc.stdout


def test_reference_pair_equals_numpy():
    head, feats, labels = bench_search.problem((40, 30, 5, 8), (4, 3), 1,
                                               torch.device('cpu'))
    f = feats.double().numpy()
    keys = head.cache.keys.double().numpy()
    values = head.cache.values.double().numpy()
    weights = head.zero_shot_weights.double().numpy()
    assert (values.sum(0) == 6).all()  # K = NK / N keys per class
    for beta, alpha in [(0.5, 1.0), (3.0, 0.2), (5.5, 2.5)]:
        logits = 100 * f @ weights + alpha * np.exp(
            -beta * (1 - f @ keys.T)) @ values
        expected = int((logits.argmax(1) == labels.numpy()).sum())
        assert bench_search.reference_pair(head, feats, labels, beta,
                                           alpha) == expected


def test_sizes_are_checked():
    assert bench_search.parse_size('10x20x5x8') == (10, 20, 5, 8)
    for bad in ('10x21x5x8', '10x20x5'):
        try:
            bench_search.parse_size(bad)
        except SystemExit as err:
            assert bad in str(err)
        else:
            raise AssertionError(f'{bad} accepted')
