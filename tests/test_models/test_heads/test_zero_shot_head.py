"""ZeroShotHead: CLIP's zero-shot logits, and the base of the heads with a
zero-shot term."""
import numpy as np
import pytest
import torch
from conftest import random_problem

from tip_adapter_mm.models import TipAdapterHead, ZeroShotHead


def test_logits_and_predictions():
    p = random_problem(seed=4)
    head = ZeroShotHead(num_classes=6, clip_logit_scale=50.0)
    assert head.is_fitted and not head.has_zero_shot_weights
    f = torch.nn.functional.normalize(p['test'], dim=-1)
    with pytest.raises(RuntimeError, match='no zero_shot_weights'):
        head((f, ))
    head.set_zero_shot_weights(p['zero_shot_weights'])
    expected = 50.0 * f.numpy() @ p['zero_shot_weights'].numpy()
    np.testing.assert_allclose(head((f, )).numpy(), expected, rtol=1e-5,
                               atol=1e-4)
    samples = head.predict((f, ))
    assert [int(s.pred_label) for s in samples] == expected.argmax(1).tolist()
    scores = np.stack([s.pred_score.numpy() for s in samples])
    assert scores.dtype == np.float64
    np.testing.assert_allclose(scores.sum(1), 1.0)
    # Nothing to fit or search.
    head.fit((p['support'], ), p['support_labels'])
    assert head.search_stages() == []
    with pytest.raises(ValueError,
                       match=r'Expected zero_shot_weights \(C, 6\)'):
        head.set_zero_shot_weights(p['zero_shot_weights'][:, :5])


def test_tip_adapter_with_alpha_zero_is_zero_shot():
    p = random_problem(seed=5)
    zero = ZeroShotHead(num_classes=6)
    tip = TipAdapterHead(num_classes=6, alpha=0.0, beta=3.0)
    for head in (zero, tip):
        head.set_zero_shot_weights(p['zero_shot_weights'])
    tip.fit((p['support'], ), p['support_labels'])
    f = torch.nn.functional.normalize(p['test'], dim=-1)
    assert torch.equal(tip((f, )), zero((f, )))
