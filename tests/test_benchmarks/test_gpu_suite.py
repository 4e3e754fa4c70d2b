"""benchmarks/gpu_suite.py: the --reduced suite end to end on CPU (every
row, positive numbers, the device named, the search's counts equal to the
reference loop's), and its pieces against independent computations."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / 'benchmarks'
sys.path.insert(0, str(BENCH))
import gpu_suite  # noqa: E402
from common import cpu_model  # noqa: E402

ROW_KEYS = {'encoder RN50', 'encoder ViT-B/16', 'search', 'tip_f',
            'test_time'}


def positive_methods(row: dict) -> None:
    assert row['methods'], row['key']
    for name, m in row['methods'].items():
        assert m['median_seconds'] > 0, (row['key'], name)
        assert m['throughput'] > 0, (row['key'], name)
        peak = m['peak_memory_bytes']
        assert peak is None or peak >= 0, (row['key'], name)


def test_reduced_suite_on_cpu(tmp_path):
    out = tmp_path / 'suite.json'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run(
        [sys.executable, str(BENCH / 'gpu_suite.py'), '--device', 'cpu',
         '--reduced', '--out', str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result['mode'] == 'reduced'
    assert result['machine']['device_name'] == f'CPU: {cpu_model()}'
    assert cpu_model() in proc.stdout and 'reduced' in proc.stdout
    rows = {row['key']: row for row in result['rows']}
    assert set(rows) == ROW_KEYS
    for key, row in rows.items():
        assert 'error' not in row, row.get('error')
        assert row['elapsed_seconds'] > 0, key
        positive_methods(row)
        assert f'[{key}] done in' in proc.stdout, key
    sizes = gpu_suite.SIZES['reduced']

    # 1. Encoders: four methods each, the half precision really changed the
    # features (a little), the ratios are the medians of the rounds.
    views = sizes['enc_classes'] * sizes['enc_shots'] * sizes['enc_views']
    for name, _ in sizes['encoders']:
        row = rows[f'encoder {name}']
        assert set(row['methods']) == {'bare_fp32', 'cache_fp32',
                                       'bare_bf16', 'cache_bf16'}
        assert row['images_per_pass'] == views
        diff = row['features_fp32_vs_bf16']
        assert 0 < diff['max_abs_diff'] < 0.05
        assert 0.99 < diff['min_cosine'] <= 1 + 1e-6
        bare, cache = (row['methods'][m]['seconds']
                       for m in ('bare_fp32', 'cache_fp32'))
        assert row['cache_over_bare_fp32'] == pytest.approx(
            float(np.median(np.array(bare) / np.array(cache))))

    # 2. Search: the reference loop's hits equal grid_search's on the
    # pairs both ran; the extrapolation is set-up + pairs x (grid / pairs).
    search = rows['search']
    num_beta, num_alpha = sizes['search']['steps']
    pairs = search['loop_pairs']
    assert len(pairs) == sizes['search']['loop_pairs']
    assert pairs[0] == [0, 0] and pairs[-1] == [num_beta - 1, num_alpha - 1]
    assert search['loop_hits'] == search['grid_search_hits']
    assert search['same_hits_on_subset'] is True
    assert all(0 <= h <= sizes['search']['val'] for h in search['loop_hits'])
    assert len(set(search['loop_hits'])) > 1  # accuracy varies on the grid
    expected = [
        r['setup_seconds'] + r['pairs_seconds'] * num_beta * num_alpha
        / len(pairs) for r in search['loop_rounds']]
    loop = search['methods']['reference_loop']
    assert loop['seconds'] == pytest.approx(expected)
    assert 'extrapolated' in loop['how'] and 'extrapolated' in proc.stdout
    assert search['speedup'] == pytest.approx(float(np.median(
        np.array(expected)
        / np.array(search['methods']['grid_search']['seconds']))))
    assert 0 <= search['best']['accuracy'] <= 100

    # 3. Tip-Adapter-F: every epoch timed for both; AMP ends near fp32.
    tip_f = rows['tip_f']
    t = sizes['tip_f']
    assert tip_f['how'] == 'measured'
    assert tip_f['sizes']['iterations'] == t['epochs'] * math.ceil(
        t['classes'] * t['shots'] / t['batch'])
    fp32, amp = (tip_f['methods'][m] for m in ('train_fp32', 'train_bf16'))
    for m in (fp32, amp):
        assert len(m['epoch_seconds']) == t['epochs']
        assert m['seconds'] == pytest.approx(sum(m['epoch_seconds']))
        assert 0 <= m['top1'] <= 100 and m['final_loss'] > 0
    assert abs(fp32['top1'] - amp['top1']) <= 5
    assert tip_f['keys_max_abs_diff'] > 0

    # 4. Test time: the cache's size, both methods timed.
    test = rows['test_time']
    assert test['cache_keys'] == sizes['test_time']['keys']
    assert test['images_per_pass'] == sizes['val_images']
    assert set(test['methods']) == {'tip_adapter', 'zero_shot'}


def test_cuda_missing_fails_clearly():
    if torch.cuda.is_available():
        pytest.skip('CUDA is available here')
    with pytest.raises(SystemExit, match='CUDA is not available'):
        gpu_suite.resolve_device('cuda')
    with pytest.raises(SystemExit, match="must be 'cuda' or 'cpu'"):
        gpu_suite.resolve_device('meta')
    with pytest.raises(SystemExit, match="must be 'cuda' or 'cpu'"):
        gpu_suite.resolve_device('gpu')
    assert gpu_suite.resolve_device('cpu') == torch.device('cpu')


def test_spread_pairs_cover_the_grid_evenly():
    pairs = gpu_suite.spread_pairs(200, 20, 5)
    # Flat indices 0, 999.75, 1999.5, 2999.25, 3999, rounded (to even),
    # as (flat // 20, flat % 20).
    assert pairs == [(0, 0), (50, 0), (100, 0), (149, 19), (199, 19)]
    assert gpu_suite.spread_pairs(2, 3, 100) == [(i, j) for i in range(2)
                                                 for j in range(3)]
    assert gpu_suite.spread_pairs(4, 5, 1) == [(0, 0)]


def test_reference_loop_counts_like_numpy():
    from tip_adapter_mm.models.heads import TipAdapterHead
    g = torch.Generator().manual_seed(3)
    n, c, nk, m = 5, 16, 20, 40
    keys = torch.nn.functional.normalize(torch.randn(nk, c, generator=g),
                                         dim=-1)
    key_labels = torch.arange(nk) % n
    feats = torch.nn.functional.normalize(
        keys[torch.randint(nk, (m, ), generator=g)]
        + 0.3 * torch.randn(m, c, generator=g), dim=-1)
    labels = torch.randint(n, (m, ), generator=g)
    text = torch.nn.functional.normalize(torch.randn(c, n, generator=g),
                                         dim=0)
    head = TipAdapterHead(n, search_step=(6, 4), clip_logit_scale=5.0)
    head.set_zero_shot_weights(text)
    head.cache.set(keys, torch.nn.functional.one_hot(key_labels, n).float())
    pairs = [(0, 0), (2, 3), (5, 1)]
    hits, setup, seconds = gpu_suite.reference_loop(
        head, feats, labels, pairs, gpu_suite.Timer(torch.device('cpu')))
    assert setup >= 0 and seconds >= 0
    f, k, w = (x.double().numpy() for x in (feats, keys, text))
    betas = [0.1 + i * (7.0 - 0.1) / 6 for i in range(6)]
    alphas = [0.1 + j * (3.0 - 0.1) / 4 for j in range(4)]
    expected = []
    for i, j in pairs:
        # Per class: the sum of the affinities of its keys.
        aff = np.exp(-betas[i] * (1 - f @ k.T))
        cache = np.stack([aff[:, key_labels.numpy() == y].sum(1)
                          for y in range(n)], axis=1)
        logits = 5.0 * f @ w + alphas[j] * cache
        expected.append(int((logits.argmax(1) == labels.numpy()).sum()))
    assert hits == expected
    assert len(set(expected)) > 1
