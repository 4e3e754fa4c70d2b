"""The README's first run, as a new user types it on a fresh machine:

    python tools/dataset_converters/prepare_dataset.py eurosat
    python tools/test.py configs/tip_eurosat_16shot.py

here with the download replaced by generated images in torchvision's
EuroSAT layout, class folders named ``00_AnnualCrop``, ``01_Forest``, ...
(``--source``), and the tiny local open_clip model of ``conftest`` in place
of RN50 (``--cfg-options``, as the README says for a machine without
internet). Checked: both commands succeed, the prompts use the class names
without their ``00_`` prefix, and the log a person reads has no warning that
is not ours and no line twice."""
import re
import shlex
import sys
from collections import Counter
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, python_tool, run_tool

#: EuroSAT's ten classes, with the ordering prefixes users give folders.
CLASSES = ('00_AnnualCrop', '01_Forest', '02_HerbaceousVegetation',
           '03_Highway', '04_Industrial', '05_Pasture', '06_PermanentCrop',
           '07_Residential', '08_River', '09_SeaLake')
PER_CLASS = 10  # our own split: 5 train, 2 val, 3 test per class
SHOTS = 4
TEMPLATE = 'a centered satellite photo of {}.'  # EuroSAT's (prompts.py)

FAKE_SOURCE = f'''
"""torchvision's EuroSAT layout with generated images (no network)."""
import numpy as np
from PIL import Image

CLASSES = {CLASSES!r}


def write(spec, root):
    assert spec.name == 'eurosat', spec.name
    rng = np.random.default_rng(0)
    for name in CLASSES:
        colour = rng.integers(30, 225, 3)
        folder = root / 'eurosat' / '2750' / name
        folder.mkdir(parents=True)
        for i in range({PER_CLASS}):
            noise = rng.normal(0, 25, (40, 40, 3))
            pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f'{{name}}_{{i + 1}}.jpg')
'''

#: A logged warning (MMEngine's logger) or a Python warning.
LOGGED_WARNING = re.compile(r' - (?:WARNING|ERROR) - (.*)$')
PY_WARNING = re.compile(r'^(.*?):\d+: (\w*Warning): (.*)$')
#: The time stamp MMEngine's logger puts before each line.
STAMP = re.compile(r'^\d\d/\d\d \d\d:\d\d:\d\d - ')
#: Where our messages are written (quiet.py quotes the library warnings it
#: filters, so it is no evidence that a message is ours).
OUR_SOURCES = [p for folder in ('tip_adapter_mm', 'tools')
               for p in sorted((REPO / folder).rglob('*.py'))
               if p.name != 'quiet.py']


def is_ours(message: str, sources: str, window: int = 30) -> bool:
    """Whether ``message`` holds ``window`` consecutive characters written
    in our code (messages are f-strings: their literal parts are in the
    source)."""
    if len(message) < window:
        return message in sources
    return any(message[i:i + window] in sources
               for i in range(len(message) - window + 1))


def foreign_warnings(log: str) -> list:
    """Warning lines of ``log`` that our code did not write."""
    sources = '\n'.join(p.read_text() for p in OUR_SOURCES)
    found = []
    for line in log.splitlines():
        py = PY_WARNING.match(line)
        if py:
            path = Path(py.group(1))
            if not (path.is_absolute() and REPO in path.parents
                    and path.parts[len(REPO.parts)] in ('tip_adapter_mm',
                                                        'tools')):
                found.append(line)
            continue
        logged = LOGGED_WARNING.search(line)
        if (logged and not is_ours(logged.group(1), sources)) or (
                not logged and re.search(r'\bwarn', line, re.I)):
            found.append(line)
    return found


def repeated_lines(log: str) -> dict:
    lines = [STAMP.sub('', line).strip() for line in log.splitlines()]
    return {line: n for line, n in Counter(lines).items()
            if line and n > 1}


@pytest.fixture(scope='module')
def first_run(tiny_clip, tmp_path_factory):
    root = tmp_path_factory.mktemp('first_run')
    (root / 'fake_eurosat.py').write_text(FAKE_SOURCE)
    data = root / 'data'
    prepare = run_tool(python_tool(
        'dataset_converters/prepare_dataset.py', 'eurosat', '--data-root',
        str(data), '--source', 'fake_eurosat:write'), python_path=str(root))
    # The second command is the one the first printed, with the tiny local
    # model instead of RN50 (a machine without internet) and fewer shots
    # and views (5 train images per class here).
    printed = re.search(r'Tip-Adapter on it: (python .*)$', prepare, re.M)
    assert printed, prepare
    command = shlex.split(printed.group(1))
    assert command[:3] == ['python', 'tools/test.py',
                           'configs/tip_eurosat_16shot.py']
    tiny = [f'model.{tower}.{key}={tiny_clip[key]}'
            for tower in ('backbone', 'text_encoder')
            for key in ('model_name', 'pretrained', 'model_config_file')]
    model = root / 'tip_adapter.pth'
    command = ([sys.executable] + command[1:] + tiny + [
        f'fewshot_dataloader.dataset.num_shots={SHOTS}',
        'few_shot_cfg.augment_epoch=2', '--work-dir',
        str(root / 'work'), '--save-model', str(model)])
    assert '--cfg-options' in command
    test = run_tool(command, timeout=600)
    return dict(prepare=prepare, test=test, data=data, model=model)


def test_both_commands_run_and_the_split_is_flagged(first_run):
    split_note = first_run['data'] / 'eurosat' / 'SPLIT_NOT_FROM_COOP.txt'
    assert split_note.is_file()
    assert 'not comparable with the papers' in first_run['prepare']
    top1 = re.findall(r'Epoch\(test\).*accuracy/top1: ([0-9.]+)',
                      first_run['test'])
    assert len(top1) == 1 and 0 <= float(top1[0]) <= 100


def test_prompts_use_the_names_without_the_prefix(first_run, tiny_clip):
    """The zero-shot weights of the saved model are the tiny CLIP's text
    features of 'a centered satellite photo of Annual Crop.' etc., computed
    here with open_clip directly."""
    state = torch.load(first_run['model'], map_location='cpu',
                       weights_only=False)['state_dict']
    (key, ) = [k for k in state if k.endswith('zero_shot_weights')]
    weights = state[key].float()  # (C, N)
    clip = open_clip.create_model(tiny_clip['model_name'],
                                  pretrained=tiny_clip['pretrained']).eval()
    tokenizer = open_clip.get_tokenizer(tiny_clip['model_name'])

    def text_weights(names):
        with torch.no_grad():
            feats = clip.encode_text(tokenizer(
                [TEMPLATE.format(n.replace('_', ' ')) for n in names]))
        return F.normalize(feats.float(), dim=-1).t()

    # The prefix gone, EuroSAT's run-together words apart
    # ('00_AnnualCrop' -> 'Annual Crop').
    stripped = [re.sub(r'(?<=[a-z])(?=[A-Z])', ' ', name.split('_', 1)[1])
                for name in CLASSES]
    assert torch.allclose(weights, text_weights(stripped), atol=1e-5)
    assert not torch.allclose(weights, text_weights(CLASSES), atol=1e-3)


def test_the_log_has_no_foreign_warning(first_run):
    log = first_run['prepare'] + first_run['test']
    assert foreign_warnings(log) == []


def test_no_line_is_printed_twice(first_run):
    log = first_run['prepare'] + first_run['test']
    assert repeated_lines(log) == {}


def test_the_checks_catch_what_they_should():
    """The two log checks, on lines of the kind issue 14 saw."""
    log = '\n'.join([
        '/venv/lib/python3.11/site-packages/mmcv/cnn/bricks/transformer.py'
        ':33: UserWarning: Fail to import ``MultiScaleDeformableAttention``',
        '12/01 10:00:00 - mmengine - WARNING - Failed to search registry '
        'with scope "x" in the "model" registry tree.',
        f'{REPO}/tip_adapter_mm/engine/search.py:10: UserWarning: ours',
        '12/01 10:00:01 - mmengine - INFO - Exp name: a',
        '12/01 10:00:02 - mmengine - INFO - Exp name: a',
    ])
    assert len(foreign_warnings(log)) == 2
    assert repeated_lines(log) == {'mmengine - INFO - Exp name: a': 2}
    # A message of ours (coop.py), logged as a warning, is ours.
    assert foreign_warnings(
        '12/01 10:00:03 - mmengine - WARNING - CoOpDTD: image x.jpg listed '
        'in the split is missing. Expected layout:') == []
