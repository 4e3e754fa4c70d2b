"""Our configs from a config anywhere: ``tip_adapter_mm::<path>`` in
``_base_`` (MMEngine's package scope, as ``mmpretrain::``) gives the same
config as the repository path, and what it builds is built without
MMEngine's scope warnings."""
import logging
import os

import pytest
from conftest import CONFIGS, image_folders  # noqa: F401
from mmengine.config import Config
from mmengine.logging import MMLogger

import tip_adapter_mm  # noqa: F401  (registers the scope)
from mmpretrain.registry import DATASETS, HOOKS, MODELS
from tip_adapter_mm.registry import SCOPE

BASES = ('_base_/models/tip_adapter_rn50.py',
         '_base_/datasets/folder_fewshot.py',
         '_base_/schedules/tip_adapter.py', '_base_/default_runtime.py')


def without_scope(value):
    """The config as plain data, without MMEngine's ``_scope_`` keys."""
    if isinstance(value, dict):
        return {k: without_scope(v) for k, v in value.items()
                if k != '_scope_'}
    if isinstance(value, (list, tuple)):
        return type(value)(without_scope(v) for v in value)
    return value


def scopes(value, found=None):
    found = set() if found is None else found
    if isinstance(value, dict):
        if '_scope_' in value:
            found.add(value['_scope_'])
        for v in value.values():
            scopes(v, found)
    elif isinstance(value, (list, tuple)):
        for v in value:
            scopes(v, found)
    return found


def write(path, bases, extra=''):
    path.write_text(f'_base_ = {list(bases)!r}\n{extra}')
    return path


@pytest.mark.parametrize('stem', [
    'custom/tip_my_dataset_16shot',
    'generalization/ape_imagenet_16shot_to_imagenet_a',
    # MMEngine wants a folder in a scoped path: the top-level experiment
    # configs are reached through _base_/..
    '_base_/../tip_eurosat_16shot', '_base_/../tip_f_dtd_16shot'])
def test_a_config_outside_the_repository_equals_the_repositorys(
        tmp_path, stem):
    """A user's config elsewhere that inherits an experiment config
    through the scope is the repository's config."""
    ours = Config.fromfile(str(CONFIGS / f'{stem}.py'))
    theirs = Config.fromfile(str(write(tmp_path / 'mine.py',
                                       [f'{SCOPE}::{stem}.py'])))
    assert without_scope(theirs.to_dict()) == without_scope(ours.to_dict())
    assert scopes(theirs.to_dict()) <= {SCOPE, 'mmpretrain'}
    assert SCOPE in scopes(theirs.to_dict())


def test_bases_through_the_scope(tmp_path, image_folders):  # noqa: F811
    extra = f"""
data_root = {str(image_folders)!r}
model = dict(head=dict(num_classes=3))
fewshot_dataloader = dict(dataset=dict(dataset=dict(data_root=data_root)))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = dict(dataset=dict(data_root=data_root))
"""
    theirs = Config.fromfile(str(write(
        tmp_path / 'mine.py', [f'{SCOPE}::{b}' for b in BASES], extra)))
    ours = Config.fromfile(str(write(
        tmp_path / 'repo.py', [str(CONFIGS / b) for b in BASES], extra)))
    assert without_scope(theirs.to_dict()) == without_scope(ours.to_dict())
    assert theirs.model._scope_ == SCOPE
    # Built through the scope: the same modules, and no warning from
    # MMEngine's scope switch (it warns when a scope has no registry).
    logger = MMLogger.get_current_instance()
    records = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        dataset = DATASETS.build(theirs.test_dataloader.dataset)
        head = MODELS.build(theirs.model.head)
        hook = HOOKS.build(theirs.custom_hooks[0]) if theirs.get(
            'custom_hooks') else None
    finally:
        logger.removeHandler(handler)
    assert not records, [r.getMessage() for r in records]
    reference = DATASETS.build(ours.test_dataloader.dataset)
    assert len(dataset) == len(reference) == 15
    assert dataset.metainfo['classes'] == reference.metainfo['classes']
    assert type(head).__name__ == 'TipAdapterHead' and head.num_classes == 3
    if hook is not None:
        assert type(hook).__name__ == ours.custom_hooks[0]['type']


def test_a_missing_path_names_the_packaged_folder(tmp_path):
    with pytest.raises(FileNotFoundError,
                       match=r'\.mim/configs/_base_/nope\.py'):
        Config.fromfile(str(write(tmp_path / 'mine.py',
                                  [f'{SCOPE}::_base_/nope.py'])))


def test_a_wheel_carries_the_configs(tmp_path):
    """A regular (non-editable) install: the wheel holds every config under
    tip_adapter_mm/.mim/configs, and a config outside the repository
    inherits them from the installed package."""
    import shutil
    import subprocess
    import sys
    import zipfile

    from conftest import REPO
    source = tmp_path / 'source'
    source.mkdir()
    for name in ('setup.cfg', 'pyproject.toml', 'README.md', 'MANIFEST.in'):
        shutil.copy(REPO / name, source / name)
    for folder in ('tip_adapter_mm', 'configs'):
        shutil.copytree(REPO / folder, source / folder, symlinks=True,
                        ignore=shutil.ignore_patterns('__pycache__'))
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps',
                    '--no-build-isolation', '-q', '-w', str(tmp_path / 'dist'),
                    str(source)], check=True, capture_output=True,
                   timeout=300)
    (wheel, ) = (tmp_path / 'dist').glob('*.whl')
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f'tip_adapter_mm/.mim/configs/{p.relative_to(CONFIGS)}'
               for p in CONFIGS.rglob('*.py')}
    assert configs <= names and 'tip_adapter_mm/.mim/model-index.yml' in names
    installed = tmp_path / 'site'
    zipfile.ZipFile(wheel).extractall(installed)
    mine = write(tmp_path / 'mine.py',
                 [f'{SCOPE}::_base_/../tip_eurosat_16shot.py'])
    out = subprocess.run(
        [sys.executable, '-W', 'ignore', '-c',
         'import tip_adapter_mm; from mmengine.config import Config; '
         f'cfg = Config.fromfile({str(mine)!r}); '
         'print(tip_adapter_mm.__file__); print(cfg.model.head.type)'],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(installed)),
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == [
        str(installed / 'tip_adapter_mm/__init__.py'), 'TipAdapterHead']
