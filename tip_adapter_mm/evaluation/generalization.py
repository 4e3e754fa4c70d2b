"""Metrics of the generalisation settings: accuracy over a subset of the
classes (ImageNet-A and -R: 200 of ImageNet's 1000) and the harmonic mean
of base and new accuracy (base-to-new)."""
from typing import Optional, Sequence, Union

import torch
from mmpretrain.registry import METRICS

from .accuracy import StableAccuracy, ranked_labels


def harmonic_mean(base: float, new: float) -> float:
    """``2 * base * new / (base + new)``, the base-to-new summary of
    CoCoOp (Zhou et al., CVPR 2022); 0 when both are 0.

    Args:
        base, new: The accuracies (%) on the base and on the new classes.
    """
    base, new = float(base), float(new)
    if base < 0 or new < 0:
        raise ValueError(f'Accuracies must be >= 0, got base={base}, '
                         f'new={new}.')
    return 0.0 if base + new == 0 else 2 * base * new / (base + new)


@METRICS.register_module()
class SubsetAccuracy(StableAccuracy):
    """Top-k accuracy (%) when only some classes can be the answer.

    A model with ``N`` outputs is tested on a dataset holding a subset
    ``S`` of its classes (ImageNet-A/-R: 200 of 1000): each sample's
    prediction is ranked among the scores of ``S`` only (the other
    columns are dropped), ties to the lower class index as
    :class:`StableAccuracy`. Labels stay the model's ``0..N-1``.
    Names: ``accuracy/top1``... (same as StableAccuracy, so checkpoint
    selection and tables read it alike).

    Args:
        topk (int | sequence of int): The k's reported.
        class_subset (sequence of int, optional): The allowed labels. By
            default the test dataset's ``metainfo['class_subset']`` (the
            runner hands it to the metric as ``dataset_meta``).
        collect_device, prefix: As MMEngine's ``BaseMetric``.
    """

    def __init__(self,
                 topk: Union[int, Sequence[int]] = (1, ),
                 class_subset: Optional[Sequence[int]] = None,
                 collect_device: str = 'cpu',
                 prefix: Union[str, None] = None) -> None:
        super().__init__(topk=topk, collect_device=collect_device,
                         prefix=prefix)
        self.class_subset = (None if class_subset is None else
                             self._check_subset(class_subset, 'class_subset'))

    @staticmethod
    def _check_subset(subset: Sequence[int], source: str) -> torch.Tensor:
        subset = torch.as_tensor(list(subset), dtype=torch.long)
        if subset.ndim != 1 or not len(subset) or (subset < 0).any() or (
                len(subset) > 1 and (subset[1:] <= subset[:-1]).any()):
            raise ValueError(
                f'SubsetAccuracy: {source} must be a non-empty, strictly '
                f'increasing list of labels >= 0, got {subset.tolist()[:10]}'
                + ('...' if len(subset) > 10 else ''))
        return subset

    def subset(self) -> torch.Tensor:
        """The allowed labels ``(K, )``, increasing."""
        if self.class_subset is not None:
            return self.class_subset
        meta = self.dataset_meta or {}
        if meta.get('class_subset') is None:
            raise ValueError(
                'SubsetAccuracy: no class_subset given and the test '
                "dataset's metainfo has no 'class_subset' (ImageNetA and "
                'ImageNetR set it): set test_evaluator.class_subset or use '
                'StableAccuracy.')
        self.class_subset = self._check_subset(
            meta['class_subset'], "the dataset's metainfo['class_subset']")
        return self.class_subset

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        subset = self.subset()
        maxk = max(self.topk)
        if maxk > len(subset):
            raise ValueError(
                f'Top-{maxk} accuracy needs at least {maxk} classes, the '
                f'subset has {len(subset)}: lower topk.')
        for sample in data_samples:
            scores = sample.get('pred_score').cpu()
            if int(subset[-1]) >= scores.shape[-1]:
                raise ValueError(
                    f'SubsetAccuracy: the subset holds label '
                    f'{int(subset[-1])} but the model predicts '
                    f'{scores.shape[-1]} classes.')
            # Positions in the increasing subset keep the order of the
            # labels, so ties still go to the lower class index.
            ranked = subset[ranked_labels(scores[subset], maxk)]
            self.results.append(
                dict(ranked=ranked,
                     gt_label=sample.get('gt_label').cpu().view(-1)[:1]))
