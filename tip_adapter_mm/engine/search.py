"""Grid search of a cache head's hyperparameters on held-out features."""
import json
import os.path as osp
import itertools
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

from ..evaluation import top1_hits
from ..models.heads.base_head import SearchStage
from ..structures import Features, check_features


@dataclass
class SearchResult:
    """Outcome of :func:`grid_search`.

    Attributes:
        best: The chosen value per hyperparameter, e.g. ``{'beta', 'alpha'}``
            (of all stages).
        accuracy: Top-1 accuracy (%) at ``best``.
        grid: The searched values per hyperparameter, outermost first (of
            the last stage).
        accuracy_grid: Top-1 accuracy (%) at every point, shaped like grid.
        num_samples: Number of samples searched on.
        stages: The result of each stage, when the head searches in more
            than one (:meth:`FewShotHead.search_stages`); else empty.
        zero_shot_accuracy: Top-1 (%) of zero-shot CLIP alone (the head's
            ``clip_logits``) on the same samples; None for a head without
            a text classifier (:func:`declined`).
        declined: Whether the search declined what the few-shot set adds
            (see :func:`declined`); None where undefined.
        edges: The searched hyperparameters whose best value is the first
            or last of their grid (:func:`grid_edges`).
        kept: Hyperparameters left at values set by hand (not searched).
    """
    best: Dict[str, float]
    accuracy: float
    grid: Dict[str, torch.Tensor]
    accuracy_grid: torch.Tensor
    num_samples: int
    stages: List['SearchResult'] = field(default_factory=list)
    zero_shot_accuracy: Optional[float] = None
    declined: Optional[bool] = None
    edges: List[Dict[str, object]] = field(default_factory=list)
    kept: Dict[str, float] = field(default_factory=dict)

    @property
    def num_points(self) -> int:
        """Grid points searched, over all stages."""
        return sum(stage.accuracy_grid.numel()
                   for stage in self.stages) or self.accuracy_grid.numel()

    def top(self, k: int = 5) -> List[Dict[str, float]]:
        """The ``k`` best points, best first (first-in-grid wins ties)."""
        flat = self.accuracy_grid.flatten()
        order = np.argsort(-flat.numpy(), kind='stable')[:k]
        shape = tuple(self.accuracy_grid.shape)
        rows = []
        for flat_idx in order:
            idx = np.unravel_index(int(flat_idx), shape)
            row = {n: float(g[i]) for (n, g), i in zip(self.grid.items(), idx)}
            row['accuracy'] = float(flat[flat_idx])
            rows.append(row)
        return rows

    def to_dict(self) -> dict:
        out = dict(
            best=self.best,
            accuracy=self.accuracy,
            num_samples=self.num_samples,
            grid={n: g.tolist() for n, g in self.grid.items()},
            accuracy_grid=self.accuracy_grid.tolist(),
            top5=self.top(5))
        if self.stages:
            out['stages'] = [stage.to_dict() for stage in self.stages]
        out.update(zero_shot_accuracy=self.zero_shot_accuracy,
                   declined=self.declined, edges=self.edges, kept=self.kept)
        return out


def _chunk(feats: Features, start: int, stop: int) -> Features:
    return tuple(f[start:stop] for f in feats)


@torch.no_grad()
def search_stage(stage: SearchStage,
                 feats: Features,
                 labels: torch.Tensor,
                 params: Dict[str, float],
                 chunk_size: int = 4096,
                 max_elements: int = 2**26) -> SearchResult:
    """Top-1 accuracy at every point of one stage's grid, the other
    hyperparameters at ``params`` (see :func:`grid_search`)."""
    grid = stage.grid
    shape = tuple(len(g) for g in grid.values())
    correct = torch.zeros(shape, dtype=torch.int64)
    step = chunk_size if stage.chunked else max(len(labels), 1)
    for start in range(0, len(labels), step):
        stop = start + step
        correct += stage.count_correct(
            _chunk(feats, start, stop), labels[start:stop], params,
            max_elements).cpu()
    best_flat = int(torch.argmax(correct.flatten()))
    best_idx = np.unravel_index(best_flat, shape)
    accuracy_grid = correct.double() * 100.0 / max(len(labels), 1)
    best = {name: float(values[i])
            for (name, values), i in zip(grid.items(), best_idx)}
    return SearchResult(
        best=best,
        accuracy=float(accuracy_grid.flatten()[best_flat]),
        grid=dict(grid),
        accuracy_grid=accuracy_grid,
        num_samples=len(labels))


@torch.no_grad()
def merge_stages(results: List[SearchResult],
                 kept: Optional[Dict[str, float]] = None) -> SearchResult:
    """One result of staged searches: the best values of every stage, the
    accuracy and grid of the last (a single stage is returned as it is)."""
    if len(results) == 1:
        return results[0]
    best = {}
    for result in results:
        best.update(result.best)
    last = results[-1]
    return SearchResult(best=best, accuracy=last.accuracy, grid=last.grid,
                        accuracy_grid=last.accuracy_grid,
                        num_samples=last.num_samples, stages=results,
                        kept=dict(kept or {}))


def grid_search(head,
                feats: Features,
                labels: torch.Tensor,
                chunk_size: int = 4096,
                max_elements: int = 2**26) -> SearchResult:
    """Top-1 accuracy of ``head`` at every point of its search grid.

    Vectorised over the grid by the head's counts (``count_correct`` of
    each :class:`SearchStage`); the features are visited ``chunk_size`` at a
    time, so memory is bounded by the chunk and ``max_elements``, not by the
    number of samples times the cache size. Hits are counted by the rule of
    :mod:`tip_adapter_mm.evaluation` (first maximum of the logits). The best
    point is the first maximum in grid order (outermost hyperparameter
    first), as the reference double loop picks it. A head that searches in
    stages (:meth:`FewShotHead.search_stages`) has each stage searched with
    the best of the stages before it; hyperparameters that no stage has
    searched yet are at their current values. The head is not changed: the
    caller applies ``result.best`` (:meth:`FewShotHead.apply_search`).

    Args:
        head: A fitted :class:`FewShotHead` with a non-empty grid.
        feats: L2-normalised features, one ``(M, C_e)`` tensor per visual
            encoder, on the head's device.
        labels: ``(M, )``.
    """
    feats = check_features(feats, head.num_feature_sets,
                           f'grid_search({type(head).__name__})')
    if len(labels) != len(feats[0]):
        raise ValueError(f'grid_search: {len(labels)} labels for '
                         f'{len(feats[0])} features.')
    stages = head.search_stages()
    if not stages:
        raise ValueError(f'{type(head).__name__} has no hyperparameters to '
                         'search.')
    params = dict(head.hyperparameters)
    results = []
    for stage in stages:
        fixed = {k: v for k, v in params.items() if k not in stage.grid}
        result = search_stage(stage, feats, labels, fixed, chunk_size,
                              max_elements)
        params.update(result.best)
        results.append(result)
    return merge_stages(results)


#: Hyperparameters that weigh what the few-shot set adds to zero-shot CLIP
#: (Tip-Adapter's and APE's cache, the second cache of the two-cache head).
CACHE_WEIGHTS = ('alpha', 'alpha2')


@torch.no_grad()
def zero_shot_top1(head, feats: Features, labels: torch.Tensor,
                   chunk_size: int = 4096) -> Optional[float]:
    """Top-1 (%) of the head's zero-shot term alone (``clip_logits`` of the
    first feature set, the first maximum wins), or None for a head without
    zero-shot weights (e.g. the cache-only head)."""
    if not getattr(head, 'has_zero_shot_weights', False) or not hasattr(
            head, 'clip_logits'):
        return None
    hits = 0
    for start in range(0, len(labels), chunk_size):
        f = feats[0][start:start + chunk_size]
        hits += int(top1_hits(head.clip_logits(f.to(
            head.zero_shot_weights.dtype)), labels[start:start + chunk_size]))
    return hits * 100.0 / max(len(labels), 1)


def declined(result: SearchResult,
             zero_shot_accuracy: Optional[float]) -> Optional[bool]:
    """Whether the search declined the few-shot adaptation: its best point
    is zero-shot CLIP, or no better than it on the samples searched.

    Precisely: True when every cache weight of the best point
    (:data:`CACHE_WEIGHTS`: ``alpha`` of Tip-Adapter / APE, ``alpha`` and
    ``alpha2`` of the two-cache head; kept values count) is 0, or when the
    best accuracy is not above ``zero_shot_accuracy`` (the zero-shot term
    alone on the same samples). None for a head without a zero-shot term
    (nothing to decline to).
    """
    if zero_shot_accuracy is None:
        return None
    point = dict(result.best, **result.kept)
    weights = [point[k] for k in CACHE_WEIGHTS if k in point]
    if weights and all(w == 0 for w in weights):
        return True
    return bool(result.accuracy <= zero_shot_accuracy)


def grid_edges(result: SearchResult) -> List[Dict[str, object]]:
    """The searched hyperparameters whose best value is the smallest or
    largest value of their grid, in each stage: ``[{'name', 'value',
    'edge': 'lower' | 'upper'}]``. Axes of one value, and axes along which
    the accuracy through the best point is flat (the value does not
    matter there, e.g. beta when alpha is 0), are not edges."""
    edges = []
    for stage in result.stages or [result]:
        names = list(stage.grid)
        if any(n not in stage.best for n in names):
            continue
        index = [int(torch.nonzero(stage.grid[n] == stage.best[n])[0])
                 for n in names]
        for axis, name in enumerate(names):
            values = stage.grid[name]
            if len(values) < 2:
                continue
            line = stage.accuracy_grid[tuple(
                slice(None) if k == axis else i
                for k, i in enumerate(index))]
            if float(line.max()) == float(line.min()):
                continue
            value = stage.best[name]
            if value == float(values.max()):
                edges.append(dict(name=name, value=value, edge='upper'))
            elif value == float(values.min()):
                edges.append(dict(name=name, value=value, edge='lower'))
    return edges


def widening_key(head, name: str) -> Optional[str]:
    """The config key that sets the grid of hyperparameter ``name`` (the
    one to change to widen it), e.g. ``'model.head.search_scale[1]'`` for
    Tip-Adapter's alpha; None when no argument sets it."""
    for attr in (f'{name}_grid', f'{name}_range', f'{name.lower()}_grid'):
        if hasattr(head, attr):
            return f'model.head.{attr}'
    second = getattr(head, 'second_grid', None)
    if callable(second) and hasattr(head, 'second_search_scale'):
        names = list(second())
        if name in names:
            return f'model.head.second_search_scale[{names.index(name)}]'
    scale = getattr(head, 'search_scale', None)
    if scale is None:
        return None
    if not isinstance(scale, (tuple, list)):
        return 'model.head.search_scale'
    names = [n for n in head.search_grid()
             if not (callable(second) and n in second())]
    if name in names and names.index(name) < len(scale):
        return f'model.head.search_scale[{names.index(name)}]'
    return None


@torch.no_grad()
def search_with_kept(head,
                     feats: Features,
                     labels: torch.Tensor,
                     kept: Dict[str, float],
                     chunk_size: int = 4096) -> Optional[SearchResult]:
    """The grid search with the hyperparameters ``kept`` at their values.

    Each stage's grid without the kept axes is visited point by point: the
    head's own ``forward`` gives the logits (the other hyperparameters at
    the point and at ``kept``), hits counted by :func:`top1_hits`, the
    first best in grid order wins. A stage whose axes are all kept is left
    out; None when every searched hyperparameter is kept. The head's
    hyperparameters and searched flag are restored afterwards.
    """
    saved = dict(head.hyperparameters)
    was_searched = head.searched
    params = dict(saved, **kept)
    results = []
    try:
        for stage in head.search_stages():
            free = {n: v for n, v in stage.grid.items() if n not in kept}
            if not free:
                continue
            shape = tuple(len(v) for v in free.values())
            correct = torch.zeros(shape, dtype=torch.int64)
            for idx in itertools.product(*(range(n) for n in shape)):
                point = {n: float(v[i])
                         for (n, v), i in zip(free.items(), idx)}
                head.set_hyperparameters(**dict(params, **point))
                for start in range(0, len(labels), chunk_size):
                    stop = start + chunk_size
                    correct[idx] += int(top1_hits(
                        head(_chunk(feats, start, stop)),
                        labels[start:stop]))
            best_flat = int(torch.argmax(correct.flatten()))
            best_idx = np.unravel_index(best_flat, shape)
            accuracy_grid = correct.double() * 100.0 / max(len(labels), 1)
            best = {n: float(v[i])
                    for (n, v), i in zip(free.items(), best_idx)}
            params.update(best)
            results.append(SearchResult(
                best=best, accuracy=float(accuracy_grid.flatten()[best_flat]),
                grid=free, accuracy_grid=accuracy_grid,
                num_samples=len(labels), kept=dict(kept)))
    finally:
        head.set_hyperparameters(**saved)
        head.is_searched.fill_(was_searched)
    if not results:
        return None
    return merge_stages(results, kept)


def save_search_report(result: SearchResult, out_dir: str,
                       name: str = 'hyperparameter_search') -> List[str]:
    """Write ``<name>.json`` and a plot of the accuracy over the grid to
    ``out_dir``: ``<name>.png`` (a heatmap for 2-D grids, a curve for 1-D),
    or ``<name>_stage<i>.png`` per stage of a staged search."""
    json_path = osp.join(out_dir, f'{name}.json')
    with open(json_path, 'w') as f:
        json.dump(result.to_dict(), f, indent=2)
    paths = [json_path]
    stages = result.stages or [result]
    for i, stage in enumerate(stages, 1):
        suffix = f'_stage{i}' if result.stages else ''
        png_path = osp.join(out_dir, f'{name}{suffix}.png')
        if _plot(stage, png_path):
            paths.append(png_path)
    return paths


def _plot(result: SearchResult, path: str) -> bool:
    """A heatmap (2-D grid) or curve (1-D) of the accuracy; False for
    other grids."""
    if result.accuracy_grid.dim() not in (1, 2):
        return False
    from matplotlib.figure import Figure
    fig = Figure(figsize=(8, 6))
    ax = fig.subplots()
    where = ', '.join(f'{n}={v:.3f}' for n, v in result.best.items())
    if result.accuracy_grid.dim() == 1:
        (name, values), = result.grid.items()
        ax.plot(values.numpy(), result.accuracy_grid.numpy())
        ax.axvline(result.best[name], color='r', linestyle='--')
        ax.set_xlabel(name)
        ax.set_ylabel('top-1 (%)')
    else:
        (row_name, rows), (col_name, cols) = result.grid.items()
        image = ax.imshow(
            result.accuracy_grid.numpy(), aspect='auto', origin='lower',
            extent=(float(cols[0]), float(cols[-1]), float(rows[0]),
                    float(rows[-1])), cmap='viridis')
        ax.plot(result.best[col_name], result.best[row_name], 'r+',
                markersize=14)
        ax.set_xlabel(col_name)
        ax.set_ylabel(row_name)
        fig.colorbar(image, ax=ax, label='top-1 (%)')
    ax.set_title(f'top-1 (%) on {result.num_samples} samples; best '
                 f'{result.accuracy:.2f} at {where}')
    fig.savefig(path, dpi=100, bbox_inches='tight')
    return True
