"""Grid search of a cache head's hyperparameters on held-out features."""
import json
import os.path as osp
from dataclasses import dataclass
from typing import Dict, List

import numpy as np
import torch


@dataclass
class SearchResult:
    """Outcome of :func:`grid_search`.

    Attributes:
        best: The chosen value per hyperparameter, e.g. ``{'beta', 'alpha'}``.
        accuracy: Top-1 accuracy (%) at ``best``.
        grid: The searched values per hyperparameter, outermost first.
        accuracy_grid: Top-1 accuracy (%) at every point, shaped like grid.
        num_samples: Number of features searched on.
    """
    best: Dict[str, float]
    accuracy: float
    grid: Dict[str, torch.Tensor]
    accuracy_grid: torch.Tensor
    num_samples: int

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
        return dict(
            best=self.best,
            accuracy=self.accuracy,
            num_samples=self.num_samples,
            grid={n: g.tolist() for n, g in self.grid.items()},
            accuracy_grid=self.accuracy_grid.tolist(),
            top5=self.top(5))


@torch.no_grad()
def grid_search(head,
                feats: torch.Tensor,
                labels: torch.Tensor,
                chunk_size: int = 4096,
                max_elements: int = 2**26) -> SearchResult:
    """Top-1 accuracy of ``head`` at every point of ``head.search_grid()``.

    Vectorised over the grid by ``head.count_correct``; the features are
    visited ``chunk_size`` at a time, so memory is bounded by the chunk and
    ``max_elements``, not by the number of samples times the cache size.
    The best point is the first maximum in grid order (outermost
    hyperparameter first), as the reference double loop picks it.

    Args:
        head: A :class:`BaseCacheHead` with its cache built.
        feats: L2-normalised features ``(M, C)`` on the head's device.
        labels: ``(M,)``.
    """
    grid = head.search_grid()
    shape = tuple(len(g) for g in grid.values())
    correct = torch.zeros(shape, dtype=torch.int64)
    for start in range(0, len(feats), chunk_size):
        stop = start + chunk_size
        correct += head.count_correct(feats[start:stop], labels[start:stop],
                                      max_elements).cpu()
    best_flat = int(torch.argmax(correct.flatten()))
    best_idx = np.unravel_index(best_flat, shape)
    accuracy_grid = correct.double() * 100.0 / max(len(feats), 1)
    best = {name: float(values[i])
            for (name, values), i in zip(grid.items(), best_idx)}
    return SearchResult(
        best=best,
        accuracy=float(accuracy_grid.flatten()[best_flat]),
        grid=dict(grid),
        accuracy_grid=accuracy_grid,
        num_samples=len(feats))


def save_search_report(result: SearchResult, out_dir: str,
                       name: str = 'hyperparameter_search') -> List[str]:
    """Write ``<name>.json`` and a heatmap ``<name>.png`` to ``out_dir``."""
    json_path = osp.join(out_dir, f'{name}.json')
    with open(json_path, 'w') as f:
        json.dump(result.to_dict(), f, indent=2)
    paths = [json_path]
    if result.accuracy_grid.dim() == 2:
        from matplotlib.figure import Figure
        (row_name, rows), (col_name, cols) = result.grid.items()
        fig = Figure(figsize=(8, 6))
        ax = fig.subplots()
        image = ax.imshow(
            result.accuracy_grid.numpy(), aspect='auto', origin='lower',
            extent=(float(cols[0]), float(cols[-1]), float(rows[0]),
                    float(rows[-1])), cmap='viridis')
        ax.plot(result.best[col_name], result.best[row_name], 'r+',
                markersize=14)
        ax.set_xlabel(col_name)
        ax.set_ylabel(row_name)
        ax.set_title(f'top-1 (%) on {result.num_samples} samples; best '
                     f'{result.accuracy:.2f} at {row_name}='
                     f'{result.best[row_name]:.3f}, {col_name}='
                     f'{result.best[col_name]:.3f}')
        fig.colorbar(image, ax=ax, label='top-1 (%)')
        png_path = osp.join(out_dir, f'{name}.png')
        fig.savefig(png_path, dpi=100, bbox_inches='tight')
        paths.append(png_path)
    return paths
