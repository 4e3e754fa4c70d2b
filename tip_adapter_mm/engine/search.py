"""Grid search of a cache head's hyperparameters on held-out features."""
import json
import os.path as osp
from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np
import torch

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
    """
    best: Dict[str, float]
    accuracy: float
    grid: Dict[str, torch.Tensor]
    accuracy_grid: torch.Tensor
    num_samples: int
    stages: List['SearchResult'] = field(default_factory=list)

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
    if len(results) == 1:
        return results[0]
    best = {}
    for result in results:
        best.update(result.best)
    last = results[-1]
    return SearchResult(best=best, accuracy=last.accuracy, grid=last.grid,
                        accuracy_grid=last.accuracy_grid,
                        num_samples=last.num_samples, stages=results)


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
