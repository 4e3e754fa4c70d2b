"""tools/sweep.py --setting cross_dataset end to end on a tiny CLIP: CoOp
trained on a 3-class source, then tested with its checkpoint on a 4-class
target (re-prompted with the target's names); the record and the table
column of the target."""
import csv
import json
import re

import numpy as np
import pytest
from conftest import python_tool, run_tool, tiny_config
from PIL import Image

TARGET = {'a_red': (200, 40, 40), 'b_green': (40, 200, 40),
          'c_blue': (40, 40, 200), 'd_yellow': (200, 200, 40)}
TOP1 = re.compile(r'accuracy/top1: (\d+\.\d+)')
HEAD = ("dict(_delete_=True, type='CoOpHead', num_classes={n}, "
        'num_context=4, topk=(1, ))')
TRAIN = ('train_cfg = dict(max_epochs=2, global_batch_size=4)\n'
         'optim_wrapper = dict(optimizer=dict(lr=0.05))\n')


@pytest.fixture(scope='module')
def target_images(tmp_path_factory):
    root = tmp_path_factory.mktemp('target')
    rng = np.random.default_rng(1)
    for split, count in (('train', 2), ('val', 1), ('test', 3)):
        for name, colour in TARGET.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                img = np.clip(np.array(colour) + rng.normal(0, 40,
                                                            (32, 32, 3)),
                              0, 255)
                Image.fromarray(img.astype(np.uint8)).save(
                    root / split / name / f'{i}.jpg')
    return root


def own_top1(log):
    lines = [ln for ln in log.read_text().splitlines()
             if 'Epoch(test)' in ln]
    return float(TOP1.findall(lines[-1])[-1])


def test_cross_dataset_tests_the_source_model_on_each_target(
        tiny_clip, image_folders, target_images, tmp_path):
    source = tiny_config(tmp_path / 'coop_tiny_2shot.py', tiny_clip,
                         image_folders, num_shots=2, augment_epoch=1,
                         schedule='coop', model_base='coop_rn50',
                         head=HEAD.format(n=3),
                         extra=TRAIN + "dataset_name = 'tiny'\n")
    targets = tmp_path / 'generalization' / 'cross_dataset'
    targets.mkdir(parents=True)
    tiny_config(targets / 'coop_tiny_2shot_to_four.py', tiny_clip,
                target_images, num_shots=2, augment_epoch=1,
                schedule='coop', model_base='coop_rn50',
                head=HEAD.format(n=4),
                extra=TRAIN + "dataset_name = 'four'\n")
    work = tmp_path / 'work'
    output = run_tool(python_tool(
        'sweep.py', str(source), '--setting', 'cross_dataset', '--shots',
        '2', '--seeds', '1', '--work-dir', str(work)), timeout=900)
    assert 'FAILED' not in output
    cell = work / 'cross_dataset' / source.stem / 'shots2_seed1_none'
    record = json.loads((cell / 'sweep_result.json').read_text())
    log = cell / 'four' / 'sweep_test.log'
    assert record['setting'] == 'cross_dataset'
    assert record['top1'] == own_top1(cell / 'sweep_cell.log')
    test = record['tests']['four']
    assert test['top1'] == own_top1(log)
    assert test['config'] == str(targets / 'coop_tiny_2shot_to_four.py')
    assert test['command'][3] == str(cell / 'final_searched.pth')
    text = log.read_text()
    assert 'Re-prompting CoOpHead' in text
    assert "'a_red', 'b_green', 'c_blue', 'd_yellow'" in text
    assert 'base' not in record and 'H' not in record
    with open(work / 'cross_dataset' / 'results.csv', newline='') as f:
        row, = csv.DictReader(f)
    assert (row['dataset'], row['method']) == ('tiny', 'CoOp')
    assert float(row['2shot_source_mean']) == record['top1']
    assert float(row['2shot_four_mean']) == test['top1']
    assert float(row['2shot_average_mean']) == test['top1']  # one target
