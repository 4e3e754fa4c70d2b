"""The class-name route: prompt names separate from folder names.

``model.class_names`` (a list, a mapping, a file) or ``<data_root>/
classes.txt`` rename the prompts; the label order always comes from the
dataset (its folders, sorted); folders with a numeric prefix (``00_``)
prompt without it; an override that breaks the label order, and a split
given ``classes=`` whose folders differ, are refused."""
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import open_clip
import pytest
import torch
from conftest import tiny_config
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmpretrain.registry import RUNNERS
from PIL import Image

from tip_adapter_mm.datasets.class_names import (default_prompt_names,
                                                 resolve_prompt_names)
from tip_adapter_mm.engine.few_shot_builder import FewShotBuilder, unwrap
from tip_adapter_mm.models import CLIPFewShotClassifier

FOLDERS = ['00_red_apple', '01_green_leaf', '02_blue-sky']
CLEAN = ['red_apple', 'green_leaf', 'blue-sky']
TEMPLATES = ['a photo of a {}.', 'itap of a {}.']


def independent_weights(tiny_clip, names, templates=TEMPLATES):
    """Zero-shot weights ``(C, N)`` of ``names`` computed here with
    open_clip's own model and tokenizer (underscores become spaces)."""
    model = open_clip.create_model(
        tiny_clip['model_name'])  # registered by the tiny_clip fixture
    model.load_state_dict(torch.load(tiny_clip['pretrained']))
    model.eval()
    tokenizer = open_clip.get_tokenizer(tiny_clip['model_name'])
    columns = []
    for name in names:
        prompts = [t.format(name.replace('_', ' ')) for t in templates]
        with torch.no_grad():
            feats = model.encode_text(tokenizer(prompts))
        feats = feats / feats.norm(dim=-1, keepdim=True)
        mean = feats.mean(dim=0)
        columns.append(mean / mean.norm())
    return torch.stack(columns, dim=1)


def classifier(tiny_clip, class_names=None, head=None):
    return CLIPFewShotClassifier(
        backbone=dict(type='OpenCLIPVisualBackbone', **tiny_clip),
        text_encoder=dict(type='OpenCLIPTextEncoder', **tiny_clip),
        head=head or dict(type='TipAdapterHead', num_classes=3),
        templates=TEMPLATES,
        class_names=class_names)


def test_prefixed_folders_prompt_without_prefix(tiny_clip):
    logger = MMLogger.get_instance('class_names_route_prefix')
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        model = classifier(tiny_clip)
        model.build_zero_shot_weights(FOLDERS)
    finally:
        logger.removeHandler(handler)
    expected = independent_weights(tiny_clip, CLEAN)
    torch.testing.assert_close(model.head.zero_shot_weights, expected,
                               rtol=1e-5, atol=1e-6)
    # ... and not those of the prefixed names (what was prompted before).
    prefixed = independent_weights(tiny_clip, FOLDERS)
    assert not torch.allclose(model.head.zero_shot_weights, prefixed,
                              atol=1e-3)
    lines = [r.getMessage() for r in records]
    assert sum('numeric prefixes' in line for line in lines) == 1, lines


def test_list_and_mapping_rename_prompts(tiny_clip):
    expected = independent_weights(tiny_clip, ['apple', 'leaf', 'sky'])
    by_list = classifier(tiny_clip, ['apple', 'leaf', 'sky'])
    by_list.build_zero_shot_weights(FOLDERS)
    by_map = classifier(tiny_clip, {'00_red_apple': 'apple',
                                    '01_green_leaf': 'leaf',
                                    '02_blue-sky': 'sky'})
    by_map.build_zero_shot_weights(FOLDERS)
    for model in (by_list, by_map):
        torch.testing.assert_close(model.head.zero_shot_weights, expected,
                                   rtol=1e-5, atol=1e-6)
    # A partial mapping: the others keep their default (prefix stripped).
    partial = classifier(tiny_clip, {'01_green_leaf': 'leaf'})
    partial.build_zero_shot_weights(FOLDERS)
    torch.testing.assert_close(
        partial.head.zero_shot_weights,
        independent_weights(tiny_clip, ['red_apple', 'leaf', 'blue-sky']),
        rtol=1e-5, atol=1e-6)


def test_text_tower_head_gets_prompt_names(tiny_clip):
    """CoOp prompts inside the text tower with the prompt names; the
    names feed its token ids."""
    head = dict(type='CoOpHead', num_classes=3, num_context=2)
    renamed = classifier(tiny_clip, ['apple', 'leaf', 'sky'], head=head)
    renamed.build_zero_shot_weights(FOLDERS)
    clean = classifier(tiny_clip, head=head)
    clean.build_zero_shot_weights(['apple', 'leaf', 'sky'])
    assert torch.equal(renamed.head.text_tower.tokens,
                       clean.head.text_tower.tokens)


def test_overrides_that_break_the_label_order_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"has 2 names but the dataset has "
                       r"3 classes.*classes without a name: '02_blue-sky'"):
        resolve_prompt_names(FOLDERS, ['apple', 'leaf'])
    with pytest.raises(ValueError, match=r"label 0: 'green leaf' given, but "
                       r"that is the name of class 1 \('01_green_leaf'\)"):
        resolve_prompt_names(FOLDERS, ['green leaf', 'red apple', 'sky'])
    with pytest.raises(ValueError, match=r"maps 1 names that are not "
                       r"classes of the dataset: 'blue_sky'"):
        resolve_prompt_names(FOLDERS, {'blue_sky': 'sky'})
    names, messages = resolve_prompt_names(FOLDERS, ['00_apple', 'b', 'c'])
    assert names == ('00_apple', 'b', 'c')
    assert any(m.startswith('WARNING: ') and "'00_apple'" in m
               for m in messages)
    # Not every name prefixed (or a year and a space): names kept.
    assert default_prompt_names(['00_a', 'b']) == ('00_a', 'b')
    assert default_prompt_names(['2012 Tesla Model S', '1993 Geo Metro']) \
        == ('2012 Tesla Model S', '1993 Geo Metro')


def test_classes_file_beside_the_data(tmp_path):
    path = tmp_path / 'classes.txt'
    path.write_text('apple\n\nleaf\n sky \n')
    names, messages = resolve_prompt_names(FOLDERS, classes_file=path)
    assert names == ('apple', 'leaf', 'sky')
    assert any(str(path) in m for m in messages)
    # model.class_names wins over the file.
    names, _ = resolve_prompt_names(FOLDERS, {'01_green_leaf': 'x'},
                                    classes_file=path)
    assert names == ('red_apple', 'x', 'blue-sky')
    path.write_text('apple\nleaf\n')
    with pytest.raises(ValueError, match='has 2 names'):
        resolve_prompt_names(FOLDERS, classes_file=path)


def write_split(root: Path, folders, per_class: int) -> None:
    for i, name in enumerate(folders):
        (root / name).mkdir(parents=True)
        for j in range(per_class):
            Image.new('RGB', (8, 8), (40 * i, 90, 20 * j)).save(
                root / name / f'{j}.jpg')


def builder_runner(data_root: Path, tmp_path: Path, uses_text=False,
                   test_classes=None):
    """A runner as far as :meth:`FewShotBuilder.check_data` reads it."""
    loader = dict(batch_size=2, num_workers=0)
    test_dataset = dict(type='CustomDataset', data_root=str(data_root),
                        data_prefix='test', pipeline=[])
    if test_classes is not None:
        test_dataset['classes'] = test_classes
    cfg = Config(dict(
        fewshot_dataloader=dict(**loader, dataset=dict(
            type='FewShotDataset', num_shots=2, seed=1,
            dataset=dict(type='CustomDataset', data_root=str(data_root),
                         data_prefix='train', pipeline=[]))),
        test_dataloader=dict(**loader, dataset=test_dataset),
        test_cfg=dict(type='StoredFeaturesTestLoop')))
    head = SimpleNamespace(uses_text=uses_text)
    return SimpleNamespace(cfg=cfg, model=SimpleNamespace(head=head),
                           work_dir=str(tmp_path / 'work'))


def test_renamed_test_folder_with_classes_is_refused(tmp_path):
    """MMPretrain's ``classes=`` turns off its folder check: a renamed
    test folder shifts every label after it (sorted folders) without a
    word. The check refuses it, naming the folder."""
    data = tmp_path / 'data'
    write_split(data / 'train', ['apple', 'leaf', 'sky'], 3)
    write_split(data / 'test', ['apple', 'leaf', 'sky_renamed'], 2)
    runner = builder_runner(data, tmp_path,
                            test_classes=['apple', 'leaf', 'sky'])
    with pytest.raises(ValueError) as err:
        FewShotBuilder().check_data(runner)
    text = str(err.value)
    assert "'sky' (the folders of the few-shot train set) vs " \
        "'sky_renamed' (the folders of the test set)" in text, text
    assert 'same class folders' in text
    # The same folders with classes= pass.
    (data / 'test' / 'sky_renamed').rename(data / 'test' / 'sky')
    FewShotBuilder().check_data(builder_runner(
        data, tmp_path, test_classes=['apple', 'leaf', 'sky']))


def test_builder_prompts_classes_file_and_keeps_folder_names(
        tmp_path, tiny_clip, image_folders):
    """Through the runner's FewShotBuilder: ``00_``-prefixed folders and
    ``<data_root>/classes.txt``; the prompts are the file's names, the
    head remembers the folder names (re-prompting compares those)."""
    data = tmp_path / 'data'
    for split in ('train', 'val', 'test'):
        for i, name in enumerate(['red_apple', 'green_leaf', 'blue_sky']):
            target = data / split / f'{i:02d}_{name}'
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(image_folders / split / name, target)
    (data / 'classes.txt').write_text('apple\nleaf\nsky\n')
    cfg = Config.fromfile(str(tiny_config(tmp_path / 'cfg.py', tiny_clip,
                                          data)))
    cfg.work_dir = str(tmp_path / 'work')
    runner = RUNNERS.build(cfg)
    runner.few_shot.build_cache(runner)
    model = unwrap(runner.model)
    folders = ('00_red_apple', '01_green_leaf', '02_blue_sky')
    assert runner.few_shot.classes == folders
    assert runner.few_shot.prompt_names == ('apple', 'leaf', 'sky')
    torch.testing.assert_close(
        model.head.zero_shot_weights,
        independent_weights(tiny_clip, ['apple', 'leaf', 'sky'],
                            model.templates),
        rtol=1e-5, atol=1e-6)
    assert model.head.built_for(folders)
    assert not model.head.built_for(('apple', 'leaf', 'sky'))
