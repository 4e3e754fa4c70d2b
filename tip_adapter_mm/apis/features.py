"""Bring your own features: fit, search and evaluate a head on tensors.

For features encoded elsewhere (another codebase, a cluster job, a
notebook), without configs, runners or images::

    from mmpretrain.registry import MODELS
    from tip_adapter_mm.apis import evaluate_head, fit_head, search_head

    head = MODELS.build(dict(type='TipAdapterHead', num_classes=N))
    fit_head(head, (support_views, ), support_labels, zero_shot_weights=W)
    result = search_head(head, (val_feats, ), val_labels)   # applies best
    metrics = evaluate_head(head, (test_feats, ), test_labels)
    # {'top1': ..., 'top5': ...}

Features are raw (these functions L2-normalise them), one tensor per visual
encoder in a tuple; a bare tensor is an error.
"""
from typing import Dict, Optional, Sequence

import torch

from ..engine.search import SearchResult, grid_search
from ..evaluation import ranked_labels
from ..models.heads import FewShotHead
from ..structures import check_features, normalized


def _device(head: FewShotHead) -> torch.device:
    return next(iter(head.buffers())).device


def fit_head(head: FewShotHead,
             support_feats: Sequence[torch.Tensor],
             labels: torch.Tensor,
             zero_shot_weights: Optional[torch.Tensor] = None
             ) -> FewShotHead:
    """Fit ``head`` on the support set.

    Args:
        head: A :class:`FewShotHead` (e.g. built from a config dict).
        support_feats: One raw feature tensor per visual encoder: ``(V, S,
            C_e)`` for ``V`` augmented views of ``S`` images, or ``(S,
            C_e)`` for one view.
        labels: ``(S, )`` labels of the images.
        zero_shot_weights: CLIP's text classifier ``(C, N)``; needed by the
            heads with a zero-shot term (:class:`ZeroShotHead` and its
            subclasses), set before fitting.

    Returns:
        The head, fitted.
    """
    first = (support_feats[0] if isinstance(support_feats, (tuple, list))
             and support_feats else None)
    dims = 3 if isinstance(first, torch.Tensor) and first.dim() == 3 else 2
    feats = check_features(support_feats, head.num_feature_sets, 'fit_head',
                           dims=dims)
    device = _device(head)
    if zero_shot_weights is not None:
        if not head.uses_text:
            raise TypeError(f'{type(head).__name__} has no zero-shot term: '
                            'do not pass zero_shot_weights.')
        head.set_zero_shot_weights(zero_shot_weights.to(device))
    elif head.uses_text and not head.has_zero_shot_weights:
        raise ValueError(f'{type(head).__name__} needs zero_shot_weights '
                         '(C, N): pass them to fit_head.')
    views = tuple((f if f.dim() == 3 else f[None]).to(device) for f in feats)
    head.fit(views, labels.to(device))
    return head


def search_head(head: FewShotHead,
                feats: Sequence[torch.Tensor],
                labels: torch.Tensor,
                chunk_size: int = 4096,
                max_elements: int = 2**26) -> SearchResult:
    """Grid-search ``head``'s hyperparameters on validation features and
    apply the best point (the head is then marked searched).

    Args:
        head: A fitted head with a non-empty search grid.
        feats: One raw ``(M, C_e)`` tensor per visual encoder.
        labels: ``(M, )``.
        chunk_size, max_elements: As :func:`grid_search`.
    """
    device = _device(head)
    feats = check_features(feats, head.num_feature_sets, 'search_head')
    result = grid_search(head, tuple(f.to(device) for f in normalized(feats)),
                         labels.to(device), chunk_size, max_elements)
    head.apply_search(result.best)
    return result


@torch.no_grad()
def predict_logits(head: FewShotHead,
                   feats: Sequence[torch.Tensor],
                   batch_size: int = 4096) -> torch.Tensor:
    """Logits ``(M, N)`` of raw features (one ``(M, C_e)`` per encoder)."""
    device = _device(head)
    feats = normalized(check_features(feats, head.num_feature_sets,
                                      'predict_logits'))
    was_training = head.training
    head.eval()
    try:
        return torch.cat([
            head(tuple(f[i:i + batch_size].to(device) for f in feats)).cpu()
            for i in range(0, len(feats[0]), batch_size)
        ])
    finally:
        head.train(was_training)


def evaluate_head(head: FewShotHead,
                  feats: Sequence[torch.Tensor],
                  labels: torch.Tensor,
                  topk: Sequence[int] = (1, 5),
                  batch_size: int = 4096) -> Dict[str, float]:
    """Top-k accuracy (%) on test features, by the rule of the search and
    of :class:`StableAccuracy` (ties to the lower class index).

    Returns:
        ``{'top1': ..., 'top5': ...}`` for the k's of ``topk`` that the
        number of classes allows.
    """
    logits = predict_logits(head, feats, batch_size)
    ks = [k for k in topk if k <= logits.shape[1]]
    ranked = ranked_labels(logits, max(ks))
    correct = ranked == labels.cpu().view(-1, 1)
    return {
        f'top{k}': float(correct[:, :k].any(dim=1).double().mean() * 100)
        for k in ks
    }
