"""benchmarks/bench_training.py: a tiny run end to end through each
method's real config and train_step; what it counts checked against the
sizes of the tiny model."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / 'benchmarks'


def test_tiny_run(tmp_path):
    out = tmp_path / 'training.json'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run(
        [sys.executable, str(BENCH / 'bench_training.py'), '--tiny',
         '--methods', 'tip_f', 'coop', 'clip_adapter', 'vpt',
         '--classes', '8', '--shots', '2', '--max-seconds', '0.2',
         '--encode-batch', '4', '--threads', '1', '--out', str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    rows = {row['key']: row for row in result['rows']}
    assert 'error' not in str(result['rows']), proc.stdout[-4000:]
    # The tiny model: embed 64, text width 64; 8 classes x 2 shots.
    tip_f, coop = rows['tip_f'], rows['coop']
    assert tip_f['trainable_parameters'] == 8 * 2 * 64  # the cache keys
    assert coop['trainable_parameters'] == 16 * 64  # 16 context vectors
    assert rows['clip_adapter']['trainable_parameters'] == 2 * 64 * 16
    # The recipes' batches (ImageNet configs, one process).
    assert (tip_f['batch'], coop['batch']) == (256, 32)
    for key in ('tip_f', 'coop', 'clip_adapter'):
        assert rows[key]['kind'] == 'stored features'
    assert rows['vpt']['kind'] == 'images'
    assert 'encode_Bench-Tiny-ViT' in rows
    for row in rows.values():
        assert row['steps'] >= 2
        rate = row['batch'] / row['seconds_per_step']
        assert abs(row['images_per_second'] - rate) < 1e-6 * rate
        images = 8 * 2
        assert abs(row['epoch_seconds'] * row['images_per_second']
                   - images) < 1e-6 * images
    assert '| CoOp | Bench-Tiny-ViT | stored features | 32 |' in proc.stdout
