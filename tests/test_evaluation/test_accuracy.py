"""StableAccuracy: top-k with ties to the lower class index, the rule the
search counts with."""
import numpy as np
import pytest
import torch
from mmpretrain.evaluation import Accuracy
from mmpretrain.structures import DataSample

from tip_adapter_mm.evaluation import StableAccuracy, ranked_labels, top1_hits


def samples(scores, labels):
    # As MMEngine's evaluator hands them to a metric: dicts.
    return [
        DataSample().set_pred_score(s).set_gt_label(int(y)).to_dict()
        for s, y in zip(scores, labels)
    ]


def numpy_topk_accuracy(scores, labels, k):
    """Rank each row by descending score, ties to the lower index (a
    stable sort of the negated scores), and count label in the first k."""
    order = np.argsort(-scores, axis=1, kind='stable')[:, :k]
    return 100.0 * np.mean([y in row for row, y in zip(order, labels)])


def evaluate(metric, scores, labels):
    metric.process(None, samples(scores, labels))
    return metric.evaluate(len(labels))


def test_matches_numpy_and_mmpretrain_without_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(200, 12, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 12, (200, ), generator=g)
    ours = evaluate(StableAccuracy(topk=(1, 5)), scores, labels)
    theirs = evaluate(Accuracy(topk=(1, 5)), scores.float(), labels)
    for k in (1, 5):
        expected = numpy_topk_accuracy(scores.numpy(), labels.numpy(), k)
        assert ours[f'accuracy/top{k}'] == pytest.approx(expected)
        assert theirs[f'accuracy/top{k}'] == pytest.approx(expected)


def test_ties_go_to_the_lower_class_index():
    # Rows tie between classes 1 and 3 (top-1) and 0/2/4 (rest).
    scores = torch.tensor([[0.1, 0.3, 0.1, 0.3, 0.1]] * 4, dtype=torch.float64)
    labels = torch.tensor([1, 3, 0, 4])
    result = evaluate(StableAccuracy(topk=(1, 2, 3)), scores, labels)
    assert result['accuracy/top1'] == 25.0  # only label 1
    assert result['accuracy/top2'] == 50.0  # 1 and 3
    assert result['accuracy/top3'] == 75.0  # 1, 3 and then 0 (not 2 or 4)
    for k in (1, 2, 3):
        assert result[f'accuracy/top{k}'] == numpy_topk_accuracy(
            scores.numpy(), labels.numpy(), k)


def test_ranked_labels_and_top1_hits_use_the_same_rule():
    logits = torch.tensor([[2.0, 5.0, 5.0], [1.0, 1.0, 1.0], [0.0, 3.0, 2.0]])
    labels = torch.tensor([2, 0, 1])
    assert ranked_labels(logits, 1).flatten().tolist() == [1, 0, 1]
    assert ranked_labels(logits, 3).tolist() == [[1, 2, 0], [0, 1, 2],
                                                 [1, 2, 0]]
    assert int(top1_hits(logits, labels)) == 2
    # A batch of grid points (a, M, N) counts per point.
    stacked = torch.stack([logits, -logits])
    assert top1_hits(stacked, labels).tolist() == [
        2, int((ranked_labels(-logits, 1).flatten() == labels).sum())
    ]


def test_float64_scores_keep_the_order_of_float32_logits():
    # Logits one float32 ulp apart: a float32 softmax can tie them, the
    # float64 one the heads store does not.
    big = torch.tensor(30.0)
    logits = torch.stack([big, torch.nextafter(big, torch.tensor(31.0))])[None]
    p64 = logits.double().softmax(dim=1)
    assert ranked_labels(p64, 1).item() == ranked_labels(logits, 1).item() == 1


def test_too_few_classes_is_a_clear_error():
    metric = StableAccuracy(topk=(1, 5))
    with pytest.raises(ValueError, match='Top-5 accuracy needs at least 5'):
        metric.process(None, samples(torch.rand(2, 3), [0, 1]))
    with pytest.raises(ValueError, match='topk must be positive'):
        StableAccuracy(topk=(0, ))


def test_top1_hits_equals_numpy_first_maximum_with_ties():
    """Many exact ties (small integers), rows of -inf, batched leading
    dimensions: the count is NumPy's first-maximum argmax's."""
    rng = np.random.default_rng(0)
    for trial in range(300):
        num_classes, num = rng.integers(1, 7), rng.integers(1, 9)
        logits = rng.integers(0, 3, (3, 2, num, num_classes)).astype(
            np.float32)
        if trial % 3 == 0:
            logits = rng.standard_normal(logits.shape).astype(np.float32)
        if trial % 7 == 0:
            logits[0, 0, 0, :] = -np.inf
        labels = rng.integers(0, num_classes, num)
        expected = (logits.argmax(-1) == labels).sum(-1)
        got = top1_hits(torch.from_numpy(logits), torch.from_numpy(labels))
        assert got.dtype == torch.int64
        np.testing.assert_array_equal(got.numpy(), expected)
