"""benchmarks/bench_heads.py: a --quick run end to end (a row per
registered head, positive times, the grids' sizes), and its arithmetic
against independent computations."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config

from mmpretrain.registry import MODELS
from tip_adapter_mm.models.heads import (CacheOnlyHead,
                                         DualCacheTipAdapterHead,
                                         FewShotHead, TipAdapterHead)

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / 'benchmarks'
sys.path.insert(0, str(BENCH))
import bench_heads  # noqa: E402

#: Grid points of each searched row, from the ImageNet configs' grids.
POINTS = {
    'tip': 200 * 20,
    'tip_f': 200 * 20,
    'tip_dual': 200 * 20 + 200 * (20 + 1),  # staged; alpha2 also 0
    'ape': 200 * 20 * 5,
    'gda': 7,
    'cache_only': 200,
    'linear_probe': 13,  # C = 10^-3 .. 10^3, two per decade
    'lp_plus_plus': 300 // 10,  # snapshots every 10 of 300 epochs
    'proker': 10 * 10,
}
TRAINED = {'tip_f', 'prolip', 'clip_adapter', 'taskres', 'clap', 'coop',
           'cocoop', 'meta_adapter', 'vpt', 'maple', 'clip_lora'}


def package_heads():
    """Head classes of the package registered in MODELS, found through the
    registry itself (not through the package's ``__all__``)."""
    return {
        name
        for name, cls in MODELS.module_dict.items()
        if isinstance(cls, type) and issubclass(cls, FewShotHead)
        and cls.__module__.startswith('tip_adapter_mm.')
    }


def test_quick_run_has_a_row_per_registered_head(tmp_path):
    out = tmp_path / 'heads.json'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run(
        [sys.executable, str(BENCH / 'bench_heads.py'), '--quick',
         '--threads', '1', '--out', str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    rows = {row['key']: row for row in result['rows']}
    assert {row['head_type'] for row in rows.values()} == package_heads()
    assert result['unbenchmarked'] == [] and result['skipped'] == []
    for key, row in rows.items():
        assert 'error' not in row, row.get('error')
        assert row['fit_seconds'] > 0, key
        assert row['fit_peak_bytes'] >= 0, key
        if key in POINTS:
            assert row['search_points'] == POINTS[key], key
            assert row['search_seconds'] > 0, key
        else:
            assert 'search_seconds' not in row, key
        if key in TRAINED:
            assert row['train_seconds'] > 0, key
            timed = row['epoch_seconds']
            assert 1 <= len(timed) <= row['recipe']['epochs']
            assert row['train_seconds'] >= sum(timed) * (1 - 1e-9)
        else:
            assert 'train_seconds' not in row, key
    # Tip-Adapter-F validates every epoch (protocol 'val'), the others not.
    assert rows['tip_f']['validation_seconds'] == pytest.approx(
        20 * rows['tip_f']['validation_pass_seconds'])
    assert 'validation_seconds' not in rows['clap']
    assert '| Tip-Adapter |' in proc.stdout


def test_linear_extrapolation():
    # On the line t = 2 + 0.5 n.
    assert bench_heads.linear_extrapolation(1, 2.5, 9, 6.5, 200) == \
        pytest.approx(102.0)
    # A negative slope (noise): the larger run scaled proportionally.
    assert bench_heads.linear_extrapolation(1, 3.0, 4, 2.0, 40) == \
        pytest.approx(20.0)
    assert bench_heads.budget_count(2.0, 1, 1000, 60.0) == 15
    assert bench_heads.budget_count(50.0, 1, 1000, 60.0) == 3
    assert bench_heads.budget_count(0.001, 1, 300, 60.0) == 300


def test_power_fit_recovers_a_cubic_cost():
    s = np.array([2000.0, 4000.0, 8000.0])
    y = 3e-10 * s**3 + 2e-6 * s**2
    assert bench_heads.power_fit(s, y, (3, 2), 16000.0) == pytest.approx(
        3e-10 * 16000.0**3 + 2e-6 * 16000.0**2)


def test_recipe_counts_iterations_and_validations():
    base = dict(
        train_dataloader=dict(batch_size=8, sampler=dict(
            type='ViewCyclingSampler', shuffle=True)),
        val_dataloader=dict(batch_size=64),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        few_shot_cfg=dict(protocol='val'),
        train_cfg=dict(max_epochs=12, val_interval=4, global_batch_size=32))
    plan = bench_heads.recipe(Config(base), num_images=100, num_views=10)
    assert (plan['samples_per_epoch'], plan['batch'],
            plan['iterations_per_epoch']) == (100, 32, 4)
    assert plan['validations'] == 3 and plan['val_batch'] == 64
    # Every view, full batch, validation-free.
    base['train_dataloader']['sampler'] = dict(type='DefaultSampler')
    base['train_cfg']['global_batch_size'] = 'all'
    base['few_shot_cfg'] = dict(protocol='none')
    plan = bench_heads.recipe(Config(base), num_images=100, num_views=10)
    assert (plan['samples_per_epoch'], plan['batch'],
            plan['iterations_per_epoch']) == (1000, 1000, 1)
    assert plan['validations'] == 0


def test_outer_steps_scale_every_beta_grid():
    tip = TipAdapterHead(4)
    bench_heads.set_outer_steps(tip, 5, 200)
    assert bench_heads.grid_points(tip) == 5 * 20
    dual = DualCacheTipAdapterHead(4, second_search_step=(100, 10))
    bench_heads.set_outer_steps(dual, 20, 200)
    assert bench_heads.grid_points(dual) == 20 * 20 + 10 * 11
    bench_heads.set_outer_steps(dual, 200, 200)
    assert dual.second_search_step == (100, 10)
    cache = CacheOnlyHead(4)
    bench_heads.set_outer_steps(cache, 7, 200)
    assert bench_heads.grid_points(cache) == 7


@pytest.mark.skipif(not Path('/proc/self/clear_refs').exists(),
                    reason='needs Linux /proc')
def test_meter_sees_the_peak_of_a_phase():
    meter = bench_heads.Meter(torch.device('cpu'))

    def allocate():
        block = np.ones(200 * 2**20, dtype=np.uint8)  # touched: resident
        return int(block[-1])

    _, seconds, peak = meter(allocate)
    assert seconds > 0
    assert 190 * 2**20 <= peak < 400 * 2**20
    # Reset between phases: a phase that allocates nothing peaks near 0.
    _, _, small = meter(lambda: None)
    assert small < 50 * 2**20
