"""Issue 14, item 10: a second ``tools/sweep.py`` run into the folder of a
first one runs its cells and keeps the first run's rows (the tables cover
every cell under the folder) and its feature store. (Two configs of one
sweep sharing the stored features, with no link from the user:
test_sweep.py::test_one_feature_store_and_the_same_shots_for_every_cell.)"""
import csv
import json

import pytest
from conftest import REPO, load_tool, python_tool, run_tool, tiny_config


sweep = load_tool('sweep')
#: The rows of an earlier sweep: another method, two seeds.
EARLIER = dict(stem='earlier_tiny_1shot', dataset='tiny',
               backbone='TinyCLIP-ViT-test', method='Earlier-Method',
               protocol='none', shots=1)


def test_a_second_sweep_keeps_the_first_rows_and_store(
        tmp_path, tiny_clip, image_folders):
    work = tmp_path / 'work'
    for seed, top1 in ((1, 40.0), (2, 50.0)):
        cell = work / EARLIER['stem'] / f'shots1_seed{seed}_none'
        cell.mkdir(parents=True)
        sweep.write_json_atomic(str(cell / sweep.RESULT_FILE),
                                dict(EARLIER, seed=seed, top1=top1))
    # The first sweep left its records and its store.
    first_store = work / 'feature_cache'
    first_store.mkdir()
    (first_store / 'earlier_entry.pth').write_bytes(b'kept')
    configs = [tiny_config(tmp_path / 'zero_shot_tiny.py', tiny_clip,
                           image_folders,
                           head="dict(_delete_=True, type='ZeroShotHead', "
                           "num_classes=3)")]
    output = run_tool(python_tool(
        'sweep.py', *map(str, configs), '--shots', '1', '--seeds', '1',
        '--protocols', 'none', '--work-dir', str(work)), timeout=600)
    assert output.count(': run\n') == 1, output[-3000:]
    # The earlier rows are still in the table, beside the new one, and
    # nothing had to be kept aside.
    with open(work / 'results.csv') as f:
        rows = {r['method']: r for r in csv.DictReader(f)}
    assert set(rows) == {'Earlier-Method', 'Zero-shot CLIP'}
    earlier = rows['Earlier-Method']
    assert (float(earlier['1shot_mean']), int(earlier['1shot_n'])) == (45.0,
                                                                       2)
    new = json.loads((work / 'zero_shot_tiny/shots1_seed1_none' /
                      sweep.RESULT_FILE).read_text())
    assert float(rows['Zero-shot CLIP']['1shot_mean']) == pytest.approx(
        new['top1'], abs=1e-4)
    assert 'Earlier-Method' in (work / 'results.md').read_text()
    assert not list(work.glob('results.*.csv'))
    # The same store, with what was there: the new cell wrote into it.
    assert (first_store / 'earlier_entry.pth').read_bytes() == b'kept'
    assert len(list(first_store.glob('test_*.pth'))) == 1
    assert not list(work.glob('*/feature_cache'))
    assert not list(work.glob('*/*/feature_cache'))


def store_keys(path):
    """The feature-store keys of the test and val splits and of the support
    views that ``path`` reads, as the builder describes them (the images
    are the same for every config of a dataset, so they are left out)."""
    from mmengine.config import Config

    from tip_adapter_mm.engine.feature_store import FeatureStore
    from tip_adapter_mm.engine.few_shot_builder import encoder_description
    cfg = Config.fromfile(str(path), import_custom_modules=False)
    few_shot = cfg.get('few_shot_cfg', {})
    encoder = encoder_description(cfg.model, few_shot.get('precision',
                                                          'fp32'))
    keys = {split: FeatureStore.key(dict(
        kind='features', encoder=encoder,
        dataset=cfg[f'{split}_dataloader'].dataset))
        for split in ('test', 'val')}
    fewshot = cfg.fewshot_dataloader.dataset
    keys['views'] = FeatureStore.key(dict(
        kind='augmented_views', encoder=encoder, dataset=fewshot,
        num_views=few_shot.get('augment_epoch'), seed=fewshot.get('seed')))
    return keys, cfg.model.backbone


def test_every_methods_config_reads_the_same_stored_features():
    """The shipped configs of the methods on one dataset and encoder (RN50)
    name the same store entries for val, test and the few-shot views, so a
    sweep of them encodes each once: no user link needed. (ProLIP stores
    the tower's features before the projection, and CLIP-LoRA, MaPLe and
    VPT run a ViT-B/16: their own entries.)"""
    configs = REPO / 'configs'
    for dataset in ('eurosat', 'imagenet'):
        reference, backbone = store_keys(configs /
                                         f'tip_{dataset}_16shot.py')
        paths = sorted(configs.glob(f'*_{dataset}_16shot.py')) + [
            configs / f'zero_shot_{dataset}.py']
        same, other = [], []
        for path in paths:
            keys, this_backbone = store_keys(path)
            if this_backbone != backbone:
                other.append(path.stem)
                continue
            same.append(path.stem)
            assert (keys['test'], keys['val']) == (
                reference['test'], reference['val']), path.stem
            if not path.stem.startswith('zero_shot'):
                assert keys['views'] == reference['views'], path.stem
        assert other == [f'{method}_{dataset}_16shot' for method in (
            'clip_lora', 'maple', 'prolip', 'vpt')], other
        assert len(same) >= 13, same
