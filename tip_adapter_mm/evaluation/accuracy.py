"""One rule for the predicted class, in the search and in the evaluator.

The predicted class is the **first** maximum of the logits: on an exact tie
the lower class index wins. The hyperparameter search counts hits with
:func:`top1_hits`, the heads predict with :func:`ranked_labels`, and
:class:`StableAccuracy` ranks the predicted scores by the same rule, so the
accuracy the search reports at a grid point is the accuracy the test loop
reports for the same logits. (MMPretrain's ``Accuracy`` ranks with
``torch.topk``, whose order on ties is not specified.)
"""
import math
from typing import List, Sequence, Union

import torch
from mmengine.evaluator import BaseMetric

from mmpretrain.registry import METRICS


def ranked_labels(scores: torch.Tensor, k: int = 1) -> torch.Tensor:
    """The ``k`` best classes of each row of ``scores`` ``(..., N)``, best
    first, ties to the lower class index: ``(..., k)`` int64."""
    if k == 1:
        return scores.argmax(dim=-1, keepdim=True)  # first maximum
    return torch.sort(scores, dim=-1, descending=True,
                      stable=True).indices[..., :k]


def top1_hits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Correct top-1 predictions of ``logits`` ``(..., M, N)`` for
    ``labels`` ``(M, )``, summed over the samples: ``(...)`` int64.

    A sample is a hit when its label's logit is the maximum and every
    lower class's logit is smaller: its label is the first maximum, the
    same answer as ``argmax(-1) == labels`` for finite (or ``-inf``)
    logits, in two maximum reductions, which vectorise far better than
    ``argmax`` on CPUs (the search's inner loop).
    """
    labels = labels.to(logits.device).long()
    index = labels.view(-1, 1).expand(logits.shape[:-1] + (1, ))
    own = logits.gather(-1, index).squeeze(-1)  # (..., M)
    classes = torch.arange(logits.shape[-1], device=logits.device)
    # 0 before each sample's label, -inf from it on: (M, N)
    later = classes >= labels.view(-1, 1)
    hide = torch.zeros(later.shape, dtype=logits.dtype,
                       device=logits.device).masked_fill_(later, -math.inf)
    earlier_max = (logits + hide).amax(dim=-1)
    first = (earlier_max < own) | (labels == 0)  # class 0 has no earlier
    hits = (own == logits.amax(dim=-1)) & first
    return hits.sum(dim=-1)


@METRICS.register_module()
class StableAccuracy(BaseMetric):
    """Top-k accuracy (%) with ties to the lower class index.

    MMPretrain's ``Accuracy`` with the ranking rule of the search (see the
    module). It reads each data sample's ``pred_score``; the heads of this
    package store their softmax in float64, which keeps the order of the
    float32 logits, so top-1 here is the first maximum of the logits. The
    metric keeps only each sample's ``max(topk)`` best labels, not its
    scores. Names: ``accuracy/top1``, ``accuracy/top5``, ...

    Args:
        topk (int | sequence of int): The k's reported.
        collect_device, prefix: As MMEngine's ``BaseMetric`` (prefix
            ``'accuracy'``).
    """
    default_prefix = 'accuracy'

    def __init__(self,
                 topk: Union[int, Sequence[int]] = (1, ),
                 collect_device: str = 'cpu',
                 prefix: Union[str, None] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.topk = (topk, ) if isinstance(topk, int) else tuple(topk)
        if not self.topk or min(self.topk) < 1:
            raise ValueError(f'topk must be positive, got {self.topk}.')

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        maxk = max(self.topk)
        for sample in data_samples:
            scores = sample.get('pred_score')
            if maxk > scores.shape[-1]:
                raise ValueError(
                    f'Top-{maxk} accuracy needs at least {maxk} classes, '
                    f'the model predicts {scores.shape[-1]}: lower topk in '
                    'val_evaluator / test_evaluator.')
            self.results.append(
                dict(ranked=ranked_labels(scores.cpu(), maxk),
                     gt_label=sample.get('gt_label').cpu().view(-1)[:1]))

    def compute_metrics(self, results: List[dict]) -> dict:
        ranked = torch.stack([r['ranked'] for r in results])  # (M, maxk)
        target = torch.cat([r['gt_label'] for r in results])  # (M, )
        correct = ranked == target[:, None]
        return {
            f'top{k}': float(correct[:, :k].any(dim=1).double().mean() * 100)
            for k in self.topk
        }
