"""Logs a person reads (issue 14, item 6): library noise filtered at the
entry points, repeats shown once, MMEngine's set-up dumps in the work
dir's log file, on the screen only with ``--show-config``."""
import io
import logging
import re
import warnings
from collections import Counter
from pathlib import Path

from tip_adapter_mm.quiet import (LIBRARY_NOISE, ConsoleFilter,
                                  filter_console, library_noise_filtered,
                                  quiet_warnings)
from conftest import python_tool, run_tool, tiny_config

#: What every run printed before (issue 14, item 6).
NOISE = ('MultiScaleDeformableAttention', 'pkg_resources',
         '"FileClient" will be deprecated', 'HardDiskBackend')
MMCV_MESSAGE = ('Fail to import ``MultiScaleDeformableAttention`` from '
                '``mmcv.ops.multi_scale_deform_attn``, You should install '
                '``mmcv`` rather than ``mmcv-lite`` if you need this module.')
PKG_MESSAGE = ('pkg_resources is deprecated as an API. See '
               'https://setuptools.pypa.io/en/latest/pkg_resources.html.')


def warn_from(module: str, message: str, category=UserWarning) -> None:
    """Issue ``message`` as if ``module`` raised it."""
    warnings.warn_explicit(message, category, f'{module}.py', 1,
                           module=module, registry={})


def test_quiet_warnings_filters_narrowly_and_shows_once():
    shown = []
    with warnings.catch_warnings():  # the test's changes end with it
        warnings.simplefilter('default')
        warnings.showwarning = lambda message, category, *args: shown.append(
            (str(message), category))
        quiet_warnings()
        quiet_warnings()  # idempotent: one filter layer, not two
        warn_from('mmcv.cnn.bricks.transformer', MMCV_MESSAGE)
        warn_from('mmengine.utils.package_utils', PKG_MESSAGE)
        warn_from('importlib', PKG_MESSAGE)
        warn_from('mmengine.utils.dl_utils.setup_env',
                  'Setting MKL_NUM_THREADS environment variable for each '
                  'process to be 1 in default, to avoid ...')
        # The same words elsewhere, or another mmcv warning: kept.
        warn_from('tip_adapter_mm.engine.search', PKG_MESSAGE)
        warn_from('mmcv.cnn.bricks.transformer', 'something else')
        for _ in range(5):
            # Libraries reset Python's once-registries by changing filters.
            with warnings.catch_warnings():
                warnings.simplefilter('always')
            warn_from('torch.utils.data.dataloader', 'worker warning')
        warn_from('tip_adapter_mm.engine.search', 'ours', RuntimeWarning)
    assert shown == [(PKG_MESSAGE, UserWarning),
                     ('something else', UserWarning),
                     ('worker warning', UserWarning),
                     ('ours', RuntimeWarning)]


def test_library_noise_filtered_restores_the_filters():
    with warnings.catch_warnings():
        before = list(warnings.filters)
        with library_noise_filtered():
            assert len(warnings.filters) == len(before) + len(LIBRARY_NOISE)
        assert warnings.filters == before


def console_and_file(tmp_path: Path, show_setup: bool):
    logger = logging.Logger(f'quiet_test_{show_setup}')
    screen = io.StringIO()
    logger.addHandler(logging.StreamHandler(screen))
    logger.addHandler(logging.FileHandler(tmp_path / f'{show_setup}.log'))
    console_filter = filter_console(logger, show_setup)
    assert isinstance(console_filter, ConsoleFilter)
    for message in ['\n' + '-' * 60 + '\nSystem environment:\n  sys: x',
                    'Config:\nmodel = dict()',
                    'Hooks will be executed in the following order:\nA',
                    '"FileClient" will be deprecated in future. Please use',
                    'Exp name: run_1', 'Epoch(train) [1]', 'Exp name: run_1',
                    'Epoch(train) [2]']:
        logger.info(message)
    for handler in logger.handlers:
        handler.close()
    return screen.getvalue(), (tmp_path / f'{show_setup}.log').read_text()


def test_console_filter(tmp_path):
    screen, log = console_and_file(tmp_path, show_setup=False)
    assert screen == 'Exp name: run_1\nEpoch(train) [1]\nEpoch(train) [2]\n'
    for text in ('System environment:', 'Config:\nmodel = dict()',
                 'Hooks will be executed', '"FileClient"'):
        assert log.count(text) == 1, text
    assert log.count('Exp name: run_1') == 2  # the file keeps everything
    screen, _ = console_and_file(tmp_path, show_setup=True)
    assert screen.startswith('\n' + '-' * 60 + '\nSystem environment:')
    assert 'Config:\nmodel = dict()' in screen and '"FileClient"' not in screen


#: Lines drawn by MMEngine's progress bar (redrawn in place).
PROGRESS = re.compile(r'^\[[ >]*\]')
TIMESTAMP = re.compile(r'^\d\d/\d\d \d\d:\d\d:\d\d - ')


def repeated_lines(output: str) -> dict:
    lines = [TIMESTAMP.sub('', line) for line in output.splitlines()
             if line.strip() and not PROGRESS.match(line)]
    return {line: n for line, n in Counter(lines).items() if n > 1}


def test_tool_runs_are_quiet(tmp_path, tiny_clip, image_folders):
    """Tip-Adapter-F with loaders of 'auto' workers and one of 4 (PyTorch
    warns about it at every epoch on a machine of fewer cores): no library
    noise, no line twice, no set-up dumps on the screen but in the log
    file; then ``tools/test.py --show-config`` prints the config."""
    base = tiny_config(tmp_path / 'tiny.py', tiny_clip, image_folders,
                       schedule='tip_adapter_f',
                       extra='train_cfg = dict(max_epochs=3)')
    config = tmp_path / 'quiet.py'
    config.write_text(
        f"_base_ = [{str(base)!r}]\n"
        "fewshot_dataloader = dict(num_workers='auto')\n"
        "val_dataloader = dict(num_workers='auto')\n"
        "test_dataloader = dict(num_workers=4)\n")
    work_dir = tmp_path / 'work'
    output = run_tool(python_tool('train.py', str(config), '--work-dir',
                                  str(work_dir)))
    for noise in NOISE:
        assert noise not in output, (noise, output)
    assert repeated_lines(output) == {}, output
    assert 'Config:' not in output and 'Hooks will be executed' not in output
    assert output.count('CPU plan: ') == 1
    assert 'OMP_NUM_THREADS in the environment' in output  # run_tool's: kept
    logs = list(work_dir.glob('2*/2*.log'))
    assert len(logs) == 1
    log = logs[0].read_text()
    assert 'Config:\n' in log and f'data_root = {str(image_folders)!r}' in log
    assert 'Hooks will be executed in the following order' in log

    output = run_tool(python_tool('test.py', str(config), '--work-dir',
                                  str(work_dir), '--show-config'))
    assert 'Config:\n' in output
    assert f'data_root = {str(image_folders)!r}' in output
    for noise in NOISE:
        assert noise not in output, noise
