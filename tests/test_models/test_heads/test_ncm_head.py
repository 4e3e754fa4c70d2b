"""NCMHead: class means of the normalised views, nothing to search."""
import numpy as np
import pytest
import torch
from conftest import random_problem

from tip_adapter_mm.models import NCMHead


def normalise(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_logits_are_scaled_cosines_to_class_means():
    p = random_problem(seed=1, classes=5, views=4)
    head = NCMHead(num_classes=5, logit_scale=10.0)
    assert not head.is_fitted
    head.fit((p['support'], ), p['support_labels'])
    assert head.is_fitted
    views = normalise(p['support'].numpy())  # every view a sample
    labels = np.tile(p['support_labels'].numpy(), len(views))
    flat = views.reshape(-1, views.shape[-1])
    means = normalise(np.stack([flat[labels == c].mean(0) for c in range(5)]))
    test = torch.nn.functional.normalize(p['test'], dim=-1)
    np.testing.assert_allclose(
        head((test, )).numpy(), 10.0 * test.numpy() @ means.T, rtol=1e-5,
        atol=1e-5)
    assert head.search_grid() == {} and head.search_stages() == []


def test_every_class_needs_a_shot_and_checkpoints_round_trip():
    p = random_problem(seed=2, classes=4)
    head = NCMHead(num_classes=5)
    with pytest.raises(ValueError, match=r'classes \[4\] have no few-shot'):
        head.fit((p['support'], ), p['support_labels'])
    head = NCMHead(num_classes=4)
    head.fit((p['support'], ), p['support_labels'])
    fresh = NCMHead(num_classes=4)
    fresh.load_state_dict(head.state_dict())
    test = torch.nn.functional.normalize(p['test'], dim=-1)
    assert torch.equal(fresh((test, )), head((test, )))
    with pytest.raises(RuntimeError, match='not fitted'):
        NCMHead(num_classes=4)((test, ))
