"""The adapted model as a product: TipAdapterInferencer, tools/infer.py,
TorchScript export, from a saved checkpoint of the tiny model."""
import json
import pickle
import runpy
import sys
from pathlib import Path

import mmcv
import numpy as np
import pytest
import torch
from conftest import REPO, python_tool, run_tool, tiny_config
from mmengine.config import Config
from mmengine.dataset import default_collate

import tip_adapter_mm  # noqa: F401
from mmpretrain.registry import RUNNERS
from tip_adapter_mm.apis import TipAdapterInferencer, export_torchscript


@pytest.fixture(scope='module')
def adapted(tiny_clip, image_folders, tmp_path_factory):
    """A config, a checkpoint of the adapted tiny model (as
    tests/test_utils/test_checkpoint.py saves it) and the test images."""
    root = tmp_path_factory.mktemp('adapted')
    config = tiny_config(root / 'tiny.py', tiny_clip, image_folders)
    cfg = Config.fromfile(str(config))
    cfg.work_dir = str(root / 'work')
    runner = RUNNERS.build(cfg)  # FewShotRunner
    runner.test()
    dataset_meta = runner.test_dataloader.dataset.metainfo
    assert list(dataset_meta['classes']) == sorted(
        p.name for p in (image_folders / 'test').iterdir())
    checkpoint = root / 'tip_adapter.pth'
    torch.save(dict(meta=dict(dataset_meta=dataset_meta),
                    state_dict=runner.model.state_dict()), checkpoint)
    # The same model before BuildCacheHook ran: nothing to predict with.
    empty = root / 'empty.pth'
    torch.save(dict(meta=dict(dataset_meta=dataset_meta),
                    state_dict=RUNNERS.build(cfg).model.state_dict()),
               empty)
    images = sorted(str(p) for p in (image_folders / 'test').rglob('*.jpg'))
    return dict(root=root, config=str(config), checkpoint=str(checkpoint),
                empty=str(empty), images=images,
                classes=list(dataset_meta['classes']))


def run_script(script: str, *args: str, monkeypatch) -> None:
    """Run ``tools/<script>`` in this process (saves an interpreter start
    and the imports: the tests must stay fast on two CPU cores)."""
    monkeypatch.setattr(sys, 'argv', [script, *args])
    runpy.run_path(str(REPO / 'tools' / script), run_name='__main__')


@pytest.fixture(scope='module')
def inferencer(adapted):
    return TipAdapterInferencer(
        adapted['config'], pretrained=adapted['checkpoint'], device='cpu')


@pytest.fixture(scope='module')
def predictions(adapted, inferencer):
    return inferencer(adapted['images'], batch_size=4)


def test_predictions_match_tools_test(adapted, inferencer, predictions):
    assert inferencer.classes == adapted['classes']
    out = adapted['root'] / 'preds.pkl'
    run_tool(python_tool('test.py', adapted['config'], adapted['checkpoint'],
                         '--out', str(out), '--work-dir',
                         str(adapted['root'] / 'reload')))
    with open(out, 'rb') as f:
        dumped = {d['img_path']: d for d in pickle.load(f)}
    assert sorted(dumped) == adapted['images']
    for path, result in zip(adapted['images'], predictions):
        expected = dumped[path]
        assert set(result) >= {'pred_label', 'pred_score', 'pred_scores',
                               'pred_class'}
        assert result['pred_label'] == int(expected['pred_label'])
        assert result['pred_class'] == adapted['classes'][
            result['pred_label']]
        np.testing.assert_allclose(
            result['pred_scores'], expected['pred_score'].numpy(),
            rtol=1e-5, atol=1e-6)
        # tools/test.py runs batches of 8 in one thread: float32 rounding.
        assert result['pred_score'] == pytest.approx(
            float(expected['pred_score'].max()), rel=1e-5)
    # The tiny model does learn the colours: a sanity check of the labels.
    correct = sum(r['pred_class'] == Path(p).parent.name
                  for p, r in zip(adapted['images'], predictions))
    assert correct >= len(predictions) // 2


def test_array_input_equals_path_input(adapted, inferencer, predictions):
    paths = adapted['images'][::5]
    arrays = [mmcv.imread(p) for p in paths]  # BGR, as documented
    from_arrays = inferencer(arrays, batch_size=2)
    from_paths = inferencer(paths, batch_size=2)
    for a, p in zip(from_arrays, from_paths):
        assert a['pred_label'] == p['pred_label']
        assert a['pred_class'] == p['pred_class']
        np.testing.assert_array_equal(a['pred_scores'], p['pred_scores'])
    # Other batch sizes (a single path) agree up to float32 rounding.
    single = inferencer(Path(paths[0]))
    assert len(single) == 1
    np.testing.assert_allclose(single[0]['pred_scores'],
                               from_paths[0]['pred_scores'],
                               rtol=1e-5, atol=1e-6)
    for p, r in zip(paths, from_paths):
        assert r['pred_label'] == predictions[adapted['images'].index(
            p)]['pred_label']
    with pytest.raises(ValueError, match='BGR'):
        inferencer(np.zeros((8, 8, 4), np.uint8))


def test_torchscript_export(adapted, inferencer, predictions):
    model = inferencer.model
    batch = default_collate(
        [inferencer.pipeline(dict(img_path=p)) for p in adapted['images']])
    data = model.data_preprocessor(batch, False)
    images = data['inputs']
    path = adapted['root'] / 'tip_adapter.pt'
    export_torchscript(model, images[:2], path)
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        expected = model(images, mode='tensor')
        logits = loaded(images)  # another batch size than traced
    assert logits.shape == (len(adapted['images']), 3)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
    assert logits.argmax(-1).tolist() == [
        r['pred_label'] for r in predictions
    ]
    # With the preprocessing inside: raw 0-255 BGR images from the pipeline.
    raw = batch['inputs'].float()
    traced = export_torchscript(model, raw[:2], with_preprocess=True)
    torch.testing.assert_close(traced(raw), expected, rtol=0, atol=1e-5)


def test_infer_and_export_tools(adapted, predictions, capsys, monkeypatch):
    images = adapted['images'][:3] + adapted['images'][-2:]
    out = adapted['root'] / 'infer.json'
    run_script('infer.py', adapted['config'], adapted['checkpoint'], *images,
               '--device', 'cpu', '--batch-size', '2', '--out', str(out),
               monkeypatch=monkeypatch)
    lines = [line.split('\t') for line in capsys.readouterr().out.splitlines()
             if line.split('\t')[0] in images]
    assert [line[0] for line in lines] == images
    expected = [predictions[adapted['images'].index(p)] for p in images]
    assert [line[1] for line in lines] == [r['pred_class'] for r in expected]
    for line, result in zip(lines, expected):
        assert float(line[2]) == pytest.approx(result['pred_score'],
                                               abs=1e-4)
    saved = json.loads(out.read_text())
    assert saved['classes'] == adapted['classes']
    assert [r['pred_class'] for r in saved['results']] == [
        r['pred_class'] for r in expected
    ]
    np.testing.assert_allclose(saved['results'][0]['pred_scores'],
                               expected[0]['pred_scores'], rtol=1e-5,
                               atol=1e-6)

    exported = adapted['root'] / 'tool.pt'
    run_script('export_torchscript.py', adapted['config'],
               adapted['checkpoint'], str(exported), '--shape', '224', '224',
               monkeypatch=monkeypatch)
    assert 'max |diff|' in capsys.readouterr().out
    logits = torch.jit.load(str(exported))(torch.zeros(1, 3, 224, 224))
    assert logits.shape == (1, 3)


def test_checkpoint_without_cache_is_a_clear_error(adapted, monkeypatch):
    with pytest.raises(RuntimeError, match='holds no fitted '
                       'TipAdapterHead.*BuildCacheHook'):
        TipAdapterInferencer(adapted['config'], pretrained=adapted['empty'],
                             device='cpu')
    with pytest.raises(RuntimeError, match='No checkpoint was given'):
        TipAdapterInferencer(adapted['config'], pretrained=False,
                             device='cpu')
    with pytest.raises(RuntimeError,
                       match='empty.pth.*holds no fitted TipAdapterHead'):
        run_script('infer.py', adapted['config'], adapted['empty'],
                   adapted['images'][0], monkeypatch=monkeypatch)
