"""Linear probe: multinomial logistic regression on the few-shot views."""
from collections import OrderedDict
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from mmpretrain.registry import MODELS
from ...evaluation import top1_hits
from ...structures import Features
from .base_head import FewShotHead

#: The inverse L2 strengths searched by default: 10^-3 .. 10^3, two values
#: per decade.
DEFAULT_C_GRID = tuple(10.0**(k / 2) for k in range(-6, 7))

_DTYPES = {'float32': torch.float32, 'float64': torch.float64}


def logistic_regression(feats: torch.Tensor,
                        labels: torch.Tensor,
                        num_classes: int,
                        C: float,
                        init: Optional[Tuple[torch.Tensor,
                                             torch.Tensor]] = None,
                        max_iter: int = 1000,
                        tol: float = 1e-6,
                        history_size: int = 10
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression with an L2 penalty on the weights
    (not the bias), full batch, with L-BFGS (strong Wolfe line search).

    Minimises scikit-learn's ``LogisticRegression(C=C)`` objective divided
    by the number of samples ``M``::

        mean_i CE(x_i @ W + b, y_i) + ||W||^2 / (2 * C * M)

    Args:
        feats: ``(M, D)`` samples, in the dtype (and on the device) to solve
            in.
        labels: ``(M, )`` in ``[0, num_classes)``.
        num_classes: N.
        C: Inverse L2 strength (> 0).
        init: Optional start ``(W (D, N), b (N, ))`` (warm start); zeros
            by default.
        max_iter: L-BFGS iterations at most.
        tol: Stop when every entry of the gradient (of the mean objective
            above) is below ``tol`` in magnitude.
        history_size: L-BFGS memory (scikit-learn's, through SciPy: 10).

    Returns:
        ``W`` ``(D, N)`` and ``b`` ``(N, )`` (centred: it sums to zero,
        which changes no probability), in ``feats``' dtype.
    """
    if not C > 0:
        raise ValueError(f'C must be > 0, got {C}.')
    num, dims = feats.shape
    params = torch.zeros(dims + 1, num_classes, dtype=feats.dtype,
                         device=feats.device)
    if init is not None:
        params[:dims] = init[0].to(params)
        params[dims] = init[1].to(params)
    params.requires_grad_(True)
    penalty = 1.0 / (2.0 * float(C) * num)
    optimizer = torch.optim.LBFGS(
        [params],
        lr=1.0,
        max_iter=int(max_iter),
        tolerance_grad=float(tol),
        tolerance_change=float(torch.finfo(feats.dtype).eps),
        history_size=int(history_size),
        line_search_fn='strong_wolfe')

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        weights, bias = params[:dims], params[dims]
        loss = F.cross_entropy(feats @ weights + bias, labels) + \
            penalty * (weights * weights).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    weights = params.detach()[:dims].clone()
    bias = params.detach()[dims].clone()
    return weights, bias - bias.mean()


@MODELS.register_module()
class LinearProbeHead(FewShotHead):
    """Linear probe (CLIP, Radford et al., ICML 2021, Sec. 3.2 and App.
    A.3) on L2-normalised features ``f`` ``(B, D)`` of any backbone, with
    no text tower::

        logits = f @ weight + bias        # weight (D, N), bias (N, )

    fitted as multinomial logistic regression with an L2 penalty on
    ``weight`` of inverse strength ``C`` (scikit-learn's
    ``LogisticRegression(C=C)`` objective: the sum of the cross-entropies
    plus ``||weight||^2 / (2 C)``; the bias is not penalised), solved by
    full-batch L-BFGS (:func:`logistic_regression`) on the head's device.
    Every augmented view of every few-shot image is a sample of its class
    (normalised on its own): ``V * S`` samples.

    ``C`` is the hyperparameter: a search visits ``c_grid`` (the CLIP paper
    sweeps a log grid on validation), refitting at each value in increasing
    order, each fit starting from the previous solution; the solutions are
    kept, so the search does not fit again per chunk of validation
    features, and :meth:`set_hyperparameters` (which applies the search's
    result) takes the kept solution, or refits on the kept support samples.
    The support samples stay on the head's device (``V * S x D`` floats:
    about 650 MB for ImageNet, 16 shots x 10 views, D = 1024) and are not
    saved in checkpoints (a checkpoint holds ``weight`` and ``bias`` at its
    ``C``): a head loaded from one predicts, but fits for another ``C``
    only after :meth:`fit`.

    Args:
        num_classes (int): N.
        C (float): Inverse L2 strength: the fixed, validation-free value
            (0.316, the value of the CLIP repository's linear-probe example
            with scikit-learn).
        c_grid (sequence of float): Values of ``C`` searched.
        max_iter (int): L-BFGS iterations per fit (1000, the CLIP paper's).
        tol (float): Gradient tolerance of :func:`logistic_regression`.
        solver_dtype (str): ``'float32'`` (fast on any GPU) or
            ``'float64'`` (exact to scikit-learn's precision).
        loss, topk, init_cfg: As :class:`FewShotHead`.
    """

    dynamic_buffers = ('weight', 'bias')
    method_name = 'Linear probe'
    uses_text = False

    def __init__(self,
                 num_classes: int,
                 C: float = 0.316,
                 c_grid: Sequence[float] = DEFAULT_C_GRID,
                 max_iter: int = 1000,
                 tol: float = 1e-6,
                 solver_dtype: str = 'float32',
                 loss: dict = dict(type='CrossEntropyLoss', loss_weight=1.0),
                 topk: Union[int, Tuple[int]] = (1, ),
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(num_classes, loss=loss, topk=topk, init_cfg=init_cfg)
        if not C > 0:
            raise ValueError(f'LinearProbeHead: C must be > 0, got {C}.')
        self.c_grid = tuple(sorted(float(c) for c in c_grid))
        if not self.c_grid or self.c_grid[0] <= 0:
            raise ValueError('LinearProbeHead: c_grid must hold values > 0, '
                             f'got {tuple(c_grid)}.')
        if solver_dtype not in _DTYPES:
            raise ValueError(f'LinearProbeHead: solver_dtype must be one of '
                             f'{list(_DTYPES)}, got {solver_dtype!r}.')
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.solver_dtype = solver_dtype
        self.register_hyperparameter('C', C)
        self.register_buffer('weight', torch.zeros(0, self.num_classes))
        self.register_buffer('bias', torch.zeros(0))
        # The normalised support samples (V * S, D) and their labels: what
        # a fit for another C needs. Not saved in checkpoints (large).
        self.register_buffer('support_feats', torch.zeros(0, 0),
                             persistent=False)
        self.register_buffer('support_labels',
                             torch.zeros(0, dtype=torch.long),
                             persistent=False)
        # C -> (weight, bias) fitted on the current support samples.
        self._solutions: Dict[float, Tuple[torch.Tensor, torch.Tensor]] = {}

    # -- fitting -------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self.weight.numel() > 0

    @property
    def has_support(self) -> bool:
        """Whether the support samples are here to fit for another C."""
        return self.support_feats.numel() > 0

    @torch.no_grad()
    def fit(self, view_feats: Features, labels: torch.Tensor) -> None:
        """Fit at the current ``C`` on every normalised view.

        Args:
            view_feats: Raw features ``((V, S, D), )``.
            labels: ``(S, )``.
        """
        views, = self.check_views(view_feats, labels)
        num_views, _, dims = views.shape
        self.check_every_class(labels)
        device = self.is_searched.device
        dtype = _DTYPES[self.solver_dtype]
        self.support_feats = F.normalize(
            views.to(device, dtype).reshape(-1, dims), dim=-1)
        # Row v * S + s of the samples is view v of image s.
        self.support_labels = labels.to(device).long().repeat(num_views)
        self._solutions = {}
        self._use(self._solution(float(self.hyperparameter('C'))))

    def _solution(self, C: float) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(weight, bias)`` fitted at ``C``: the kept one, or a new fit
        starting from the kept solution of the nearest C below (zeros if
        none)."""
        if C in self._solutions:
            return self._solutions[C]
        if not self.has_support:
            raise RuntimeError(
                f'LinearProbeHead: fitting at C={C} needs the support '
                'samples, which checkpoints do not hold (the head was '
                'loaded, fitted at C='
                f'{float(self.hyperparameter("C"))}): call fit() first.')
        below = [c for c in self._solutions if c < C]
        init = self._solutions[max(below)] if below else None
        solution = logistic_regression(
            self.support_feats, self.support_labels, self.num_classes, C,
            init=init, max_iter=self.max_iter, tol=self.tol)
        self._solutions[C] = solution
        return solution

    def _use(self, solution: Tuple[torch.Tensor, torch.Tensor]) -> None:
        weight, bias = solution
        device = self.is_searched.device
        self.weight = weight.float().to(device).contiguous()
        self.bias = bias.float().to(device).contiguous()

    def set_hyperparameters(self, **params: float) -> None:
        """Set ``C`` (and refit at it if fitted: the kept solution, or a fit
        on the kept support samples)."""
        old = float(self.hyperparameter('C'))
        if 'C' in params and not float(params['C']) > 0:
            raise ValueError(f'LinearProbeHead: C must be > 0, got '
                             f'{params["C"]}.')
        if self.is_fitted and 'C' in params and float(params['C']) != old:
            self._use(self._solution(float(params['C'])))
        super().set_hyperparameters(**params)

    # -- predictions ---------------------------------------------------------
    def forward(self, feats: Features) -> torch.Tensor:
        """Logits ``(B, N)``."""
        self._require_fitted()
        return self.pre_logits(feats) @ self.weight + self.bias

    # -- search --------------------------------------------------------------
    def search_grid(self) -> 'OrderedDict[str, torch.Tensor]':
        return OrderedDict(C=torch.tensor(self.c_grid, dtype=torch.float64))

    @torch.no_grad()
    def count_correct(self, feats: Features, labels: torch.Tensor,
                      params: Dict[str, float],
                      max_elements: int = 2**26) -> torch.Tensor:
        """Correct predictions of the fit at each ``C`` of the grid (fitted
        once, in increasing order, then kept)."""
        f, = self.check_feats(feats)
        self._require_fitted()
        correct = torch.empty(len(self.c_grid), dtype=torch.int64)
        for i, C in enumerate(self.c_grid):
            weight, bias = self._solution(C)
            logits = f @ weight.to(f) + bias.to(f)
            correct[i] = top1_hits(logits, labels).cpu()
        return correct
