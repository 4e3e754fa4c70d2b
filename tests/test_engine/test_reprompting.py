"""Re-prompting a trained class-agnostic head with other class names
(base-to-new "new" classes, cross-dataset), and refusing the others."""

import pytest
import torch
from conftest import python_tool, run_tool, tiny_config

from tip_adapter_mm.models import OpenCLIPTextEncoder
from tip_adapter_mm.models.heads import (CoOpHead, FewShotHead,
                                         TipAdapterHead, ZeroShotHead)
from tip_adapter_mm.models.utils import build_zero_shot_weights, get_templates

NEW = ['c_blue', 'd_yellow']


def subset_lines(subset: str, num_classes: int) -> str:
    """Config lines putting the ``subset`` classes in the three loaders."""
    def wrap(split, pipeline):
        return (f"dict(_delete_=True, type='BaseToNewDataset', "
                f"subset={subset!r}, dataset=dict(type='CustomDataset', "
                f"data_root=data_root, data_prefix={split!r}, "
                f"pipeline={{{{_base_.{pipeline}}}}}))")
    return (f"model['head']['num_classes'] = {num_classes}\n"
            f"fewshot_dataloader = dict(dataset=dict(num_shots=2, "
            f"dataset={wrap('train', 'train_pipeline')}))\n"
            f"val_dataloader = dict(dataset={wrap('val', 'test_pipeline')})\n"
            f"test_dataloader = dict(dataset={wrap('test', 'test_pipeline')})"
            '\n')


def test_head_api():
    head = ZeroShotHead(num_classes=2)
    assert head.built_for(['x', 'y']) is None  # not built yet
    head.set_class_names(['x', 'y'])
    assert head.built_for(['x', 'y']) is True
    assert head.built_for(['y', 'x']) is False  # order is the labels'
    head.set_zero_shot_weights(torch.ones(4, 2))
    head.forget_classes(3)
    assert head.num_classes == 3 and not head.has_zero_shot_weights
    assert head.built_for(['x', 'y']) is None
    assert head.zero_shot_weights.shape == (0, 3)
    with pytest.raises(ValueError, match='num_classes=3 but got 2'):
        head.set_class_names(['x', 'y'])
    # The digest travels in the state dict.
    head.set_class_names(['p', 'q', 'r'])
    fresh = ZeroShotHead(num_classes=3)
    fresh.load_state_dict(head.state_dict())
    assert fresh.built_for(['p', 'q', 'r'])
    # Per-class learners refuse; CoOp only with a shared context.
    with pytest.raises(ValueError, match='TipAdapterHead learns tensors'):
        TipAdapterHead(num_classes=2).forget_classes(3)
    assert CoOpHead(num_classes=2).class_agnostic
    assert not CoOpHead(num_classes=2, class_specific=True).class_agnostic
    assert not FewShotHead.class_agnostic


def test_coop_trained_on_base_is_reprompted_on_new(tiny_clip, four_classes,
                                                   tmp_path):
    head = ("dict(_delete_=True, type='CoOpHead', num_classes=2, "
            'num_context=4, topk=(1, ))')
    train = ('train_cfg = dict(max_epochs=2, global_batch_size=4)\n'
             'param_scheduler = None\n'
             'optim_wrapper = dict(optimizer=dict(lr=0.05))\n')
    base = tiny_config(tmp_path / 'base.py', tiny_clip, four_classes,
                       num_shots=2, schedule='coop', model_base='coop_rn50',
                       head=head, extra=train + subset_lines('base', 2))
    new = tiny_config(tmp_path / 'new.py', tiny_clip, four_classes,
                      num_shots=2, schedule='coop', model_base='coop_rn50',
                      head=head, extra=train + subset_lines('new', 2))
    work = tmp_path / 'work'
    run_tool(python_tool('train.py', str(base), '--work-dir', str(work)))
    checkpoint = work / 'epoch_2.pth'
    saved = tmp_path / 'new_model.pth'
    log = run_tool(
        python_tool('test.py', str(new), str(checkpoint), '--work-dir',
                    str(tmp_path / 'test'), '--save-model', str(saved)))
    assert 'Re-prompting CoOpHead' in log
    assert "'c_blue', 'd_yellow'" in log
    trained = torch.load(checkpoint, weights_only=False)['state_dict']
    adapted = torch.load(saved, weights_only=False)['state_dict']
    # The learned context is kept as it is ...
    assert torch.equal(adapted['head.ctx'], trained['head.ctx'])
    # ... the class list is the new one ...
    assert torch.equal(adapted['head.class_names_digest'],
                       FewShotHead.digest_class_names(NEW))
    assert not torch.equal(adapted['head.class_names_digest'],
                           trained['head.class_names_digest'])
    # ... and the zero-shot weights are those of the new names.
    encoder = OpenCLIPTextEncoder(**tiny_clip)
    expected = build_zero_shot_weights(encoder, NEW, get_templates('default'))
    torch.testing.assert_close(adapted['head.zero_shot_weights'], expected)
    # The re-prompted head's text features for the new names equal a head
    # built for them from the start with the trained context.
    fresh = CoOpHead(num_classes=2, num_context=4)
    fresh.set_text_tower(encoder.clip, encoder.tokenizer, NEW)
    fresh.ctx.data = trained['head.ctx'].clone()
    reloaded = CoOpHead(num_classes=2, num_context=4)
    reloaded.load_state_dict(
        {k[len('head.'):]: v for k, v in adapted.items()
         if k.startswith('head.')})
    reloaded.set_text_tower(encoder.clip, encoder.tokenizer, NEW)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.text_features(),
                                   fresh.text_features())
        old = CoOpHead(num_classes=2, num_context=4)
        old.set_text_tower(encoder.clip, encoder.tokenizer,
                           ['a_red', 'b_green'])
        old.ctx.data = trained['head.ctx'].clone()
        assert (old.text_features() - fresh.text_features()).abs().max() > 1e-4

    # A per-class method trained on base is refused on new, naming why.
    tip_base = tiny_config(tmp_path / 'tip_base.py', tiny_clip, four_classes,
                           num_shots=2, extra=subset_lines('base', 2))
    tip_new = tiny_config(tmp_path / 'tip_new.py', tiny_clip, four_classes,
                          num_shots=2, extra=subset_lines('new', 2))
    tip_model = tmp_path / 'tip.pth'
    run_tool(python_tool('test.py', str(tip_base), '--work-dir',
                         str(tmp_path / 'tip'), '--save-model',
                         str(tip_model)))
    out = run_tool(python_tool('test.py', str(tip_new), str(tip_model),
                               '--work-dir', str(tmp_path / 'tip2')),
                   expect_rc=1)
    assert 'TipAdapterHead was trained or fitted on other classes' in out
    assert "'c_blue', 'd_yellow'" in out
