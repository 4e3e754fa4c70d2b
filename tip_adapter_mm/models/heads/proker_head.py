"""ProKeR: kernel ridge regression of what zero-shot CLIP gets wrong on the
few-shot views, with an exact solve for small support sets and a Nystrom
approximation for large ones."""
import math
from collections import OrderedDict
from typing import (Dict, Iterator, List, NamedTuple, Optional, Sequence,
                    Tuple, Union)

import torch
import torch.nn.functional as F

from mmpretrain.registry import MODELS
from ...evaluation import top1_hits
from ...structures import Features
from .base_head import SearchStage
from .zero_shot_head import ZeroShotHead

#: Validation-free ``(beta, lmbda)`` per number of shots: the official
#: code's values for CLIP RN50 (selected on ImageNet, averaged over its
#: seeds), which its ``--hp-selection imagenet`` transfers to every dataset.
RN50_VALIDATION_FREE = {
    1: (3.0, 0.05),
    2: (2.6, 0.05),
    4: (1.5, 0.05),
    8: (1.66, 0.07),
    16: (1.7, 0.1),
}

#: From this many lambdas on, a search eigendecomposes the system once per
#: beta; below, it factorises ``G + lambda I`` per lambda (a Cholesky
#: factorisation costs 1/20 to 1/60 of an eigendecomposition of the same
#: size, measured with LAPACK on CPU).
EIGH_MIN_LAMBDAS = 40


def proker_kernel(x: torch.Tensor, centres: torch.Tensor,
                  beta: float) -> torch.Tensor:
    """``k(x, c) = exp(-beta (1 - x . c))`` in float64: ``(B, C), (P, C) ->
    (B, P)``. For unit vectors, ``1 - x . c`` is half the squared distance:
    a Gaussian kernel on the sphere."""
    out = x.double() @ centres.double().t()
    return out.sub_(1.0).mul_(beta).exp_()  # in place: one (B, P) tensor


def _linspace(value: Sequence[float], name: str) -> Tuple[float, float, int]:
    """Check a ``(start, end, steps)`` triple of a positive grid."""
    if len(value) != 3:
        raise ValueError(f'ProKeRHead: {name} is (start, end, steps) of a '
                         f'linspace, got {value!r}.')
    start, end, steps = float(value[0]), float(value[1]), value[2]
    if int(steps) != steps or steps < 1 or not 0 < start <= end:
        raise ValueError(f'ProKeRHead: {name}=(start, end, steps) needs 0 < '
                         f'start <= end and an integer steps >= 1, got '
                         f'{value!r}.')
    return start, end, int(steps)


class KernelSystem(NamedTuple):
    """The regression for one beta, reduced to ``G`` (r, r) and ``b``
    (r, N): ``coef(lmbda) = T @ lmbda (G + lmbda I)^-1 b`` with ``T`` the
    identity (exact) or ``chol^-T`` (Nystrom).

    Attributes:
        centres: ``(P, C)``, the second argument of the kernel in the
            predictions ``base + k(f, centres) @ coef``: every support view
            (exact) or the landmarks (Nystrom).
        gram: ``(r, r)`` float64 ``G``.
        rhs: ``(r, N)`` float64 ``b``.
        chol: ``(P, P)`` lower Cholesky factor of ``k(L, L) + jitter I``
            (Nystrom), or None (exact).
    """
    centres: torch.Tensor
    gram: torch.Tensor
    rhs: torch.Tensor
    chol: Optional[torch.Tensor]


@MODELS.register_module()
class ProKeRHead(ZeroShotHead):
    """ProKeR (Bendou et al., "A Kernel Perspective on Training-Free
    Few-Shot Adaptation of Large Vision-Language Models", CVPR 2025):
    kernel ridge regression on the residual of zero-shot CLIP, a global
    regulariser pulling the few-shot predictor towards CLIP.

    With the ``M = V * S`` support views ``Z`` ``(M, C)`` (every augmented
    view of every few-shot image, each L2-normalised: the official code's
    view rule), their one-hot labels ``Y`` ``(M, N)``, CLIP's text
    classifier ``T = zero_shot_weights`` ``(C, N)`` and the kernel
    ``k(x, z) = exp(-beta (1 - x . z))``::

        (k(Z, Z) / lmbda + I) A = Y - Z T          # A: (M, N)
        logits(f) = f T + k(f, Z) A                 # (B, N)

    The zero-shot base is the unscaled cosine ``f T``, as in the official
    code (the head's ``clip_logit_scale`` is not used). With
    ``zero_shot_base=False`` the base is zero: plain kernel ridge regression
    of the one-hot labels, which needs no text tower (``uses_text`` is then
    False and the head runs on any visual backbone).

    **Scale.** ``M`` reaches 160,000 on ImageNet (16 shots x 10 views x
    1000 classes): the ``M x M`` system alone would take 100 GB in float32.
    Up to ``exact_max_samples`` views the system is solved exactly (float64,
    ``M x M``). Above, it is approximated by Nystrom's method (subset of
    regressors) on ``m`` landmarks ``L``: the view-averaged few-shot images
    (each image's normalised views averaged and normalised; ``m = S``), a
    seeded subset of them, or them and some views (``num_landmarks``). The
    predictor is ``f T + k(f, L) W`` with ``W`` ``(m, N)`` minimising the
    same objective restricted to the span of ``k(., L)``::

        W = lmbda (k(L, Z) k(Z, L) + lmbda k(L, L))^-1 k(L, Z) (Y - Z T)

    which is the exact solution when the landmarks are the views (one view
    per image). It costs ``O(M m^2 + m^3)`` time and ``O(m^2)`` memory
    instead of ``O(M^3)`` and ``O(M^2)``; ``k(Z, L)`` is visited in chunks
    of ``max_elements``. ``k(L, L)`` gets ``jitter`` on its diagonal before
    its Cholesky factorisation.

    **Search.** ``beta`` and ``lmbda`` are searched on validation over
    ``linspace(*beta_range) x linspace(*lmbda_range)`` (the official code's
    per-dataset grids). For each beta the kernel products are computed once
    and reused for every lambda: one eigendecomposition of the reduced
    system (``EIGH_MIN_LAMBDAS`` lambdas or more) or one Cholesky factor
    per lambda of it. :meth:`set_hyperparameters` (and so a search's
    result) solves again from the kept support views. With
    ``few_shot_cfg.protocol='none'``, :meth:`validation_free_hyperparameters`
    picks ``(beta, lmbda)`` by the number of shots from ``validation_free``
    (default: the official RN50 values transferred from ImageNet).

    Args:
        num_classes (int): N.
        beta (float): Kernel sharpness: the fixed value.
        lmbda (float): Regularisation (> 0; the larger, the more the
            regression fits the views, the less it stays near CLIP): the
            fixed value.
        beta_range, lmbda_range (tuple): ``(start, end, steps)`` of the
            searched ``torch.linspace`` of each.
        zero_shot_base (bool): Regress the residual of zero-shot CLIP (True)
            or the labels themselves (False: no text tower needed).
        exact_max_samples (int): Largest ``M`` solved exactly; above, the
            Nystrom approximation (0: always Nystrom).
        num_landmarks (int, optional): Nystrom landmarks ``m``: the
            view-averaged few-shot images (None: ``m = S``), a seeded subset
            of them (``m < S``), or all of them and ``m - S`` seeded views
            (``m > S``: closer to the exact solve, ``O(m^2)`` memory).
        landmark_seed (int): Seed of those choices.
        jitter (float): Added to the diagonal of ``k(L, L)`` (whose diagonal
            is 1) before its Cholesky factorisation.
        validation_free (dict, optional): ``{shots: (beta, lmbda)}`` for
            protocol ``'none'``; the nearest number of shots (in log scale)
            to the fitted set's is used. Default :data:`RN50_VALIDATION_FREE`.
        max_elements (int): Bound on the elements of the kernel chunks of
            :meth:`fit` and :meth:`forward`.
        loss, topk, init_cfg: As :class:`ZeroShotHead`.
    """

    class_agnostic = False  # fitted per class
    dynamic_buffers = ZeroShotHead.dynamic_buffers + (
        'support_views', 'support_labels', 'centres', 'coef')
    method_name = 'ProKeR'

    def __init__(self,
                 num_classes: int,
                 beta: float = 1.7,
                 lmbda: float = 0.1,
                 beta_range: Sequence[float] = (0.5, 3.0, 20),
                 lmbda_range: Sequence[float] = (0.001, 1.0, 10),
                 zero_shot_base: bool = True,
                 exact_max_samples: int = 4096,
                 num_landmarks: Optional[int] = None,
                 landmark_seed: int = 0,
                 jitter: float = 1e-6,
                 validation_free: Optional[Dict[int, Sequence[float]]] = None,
                 max_elements: int = 2**26,
                 loss: dict = dict(type='CrossEntropyLoss', loss_weight=1.0),
                 topk: Union[int, Tuple[int]] = (1, ),
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(num_classes, loss=loss, topk=topk, init_cfg=init_cfg)
        self.beta_range = _linspace(beta_range, 'beta_range')
        self.lmbda_range = _linspace(lmbda_range, 'lmbda_range')
        if not float(lmbda) > 0 or not float(beta) >= 0:
            raise ValueError(f'ProKeRHead needs beta >= 0 and lmbda > 0, got '
                             f'beta={beta}, lmbda={lmbda}.')
        self.register_hyperparameter('beta', beta)
        self.register_hyperparameter('lmbda', lmbda)
        self.zero_shot_base = bool(zero_shot_base)
        # The classifier builds zero-shot weights only for heads that use
        # them: without the base, none (and no text tower) is needed.
        self.uses_text = self.zero_shot_base
        if int(exact_max_samples) < 0:
            raise ValueError('ProKeRHead: exact_max_samples must be >= 0, '
                             f'got {exact_max_samples}.')
        self.exact_max_samples = int(exact_max_samples)
        if num_landmarks is not None and int(num_landmarks) < 1:
            raise ValueError('ProKeRHead: num_landmarks must be None or >= '
                             f'1, got {num_landmarks}.')
        self.num_landmarks = (None if num_landmarks is None else
                              int(num_landmarks))
        self.landmark_seed = int(landmark_seed)
        if not float(jitter) > 0:
            raise ValueError(f'ProKeRHead: jitter must be > 0, got {jitter}.')
        self.jitter = float(jitter)
        table = (RN50_VALIDATION_FREE
                 if validation_free is None else validation_free)
        if not table:
            raise ValueError('ProKeRHead: validation_free needs at least one '
                             '{shots: (beta, lmbda)} entry.')
        self.validation_free = {
            int(shots): (float(values[0]), float(values[1]))
            for shots, values in table.items()
        }
        if int(max_elements) < 1:
            raise ValueError('ProKeRHead: max_elements must be >= 1, got '
                             f'{max_elements}.')
        self.max_elements = int(max_elements)
        # Every normalised view (V, S, C) and the images' labels (S, ),
        # kept to solve again at other hyperparameters; the predictor's
        # centres (P, C) and coefficients (P, N).
        self.register_buffer('support_views', torch.zeros(0, 0, 0))
        self.register_buffer('support_labels',
                             torch.zeros(0, dtype=torch.long))
        self.register_buffer('centres', torch.zeros(0, 0))
        self.register_buffer(
            'coef', torch.zeros(0, self.num_classes, dtype=torch.float64))

    # -- the support set -----------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self.coef.numel() > 0

    @property
    def num_samples(self) -> int:
        """``M``: support views (every view of every image)."""
        return self.support_views.shape[0] * self.support_views.shape[1]

    @property
    def uses_exact_solve(self) -> bool:
        """Whether the fitted support set is solved exactly (``M <=
        exact_max_samples``) rather than by the Nystrom approximation."""
        return self.num_samples <= self.exact_max_samples

    @property
    def num_centres(self) -> int:
        """``P``: centres of the predictor, ``M`` (exact) or ``m``
        (Nystrom landmarks)."""
        if self.uses_exact_solve:
            return self.num_samples
        images = self.support_views.shape[1]
        return min(images + self.num_samples, self.num_landmarks or images)

    @torch.no_grad()
    def fit(self, view_feats: Features, labels: torch.Tensor) -> None:
        """Keep every normalised view and solve at the current ``(beta,
        lmbda)``.

        Args:
            view_feats: Raw features ``((V, S, C), )`` of ``V`` views of
                ``S`` images.
            labels: ``(S, )``.
        """
        views, = self.check_views(view_feats, labels)
        if self.zero_shot_base and not self.has_zero_shot_weights:
            raise RuntimeError(
                'ProKeRHead regresses the residual of zero-shot CLIP: set '
                'its zero_shot_weights before fit() (the classifier builds '
                'them from model.text_encoder), or pass '
                'zero_shot_base=False.')
        if views.shape[1] == 0:
            raise ValueError('ProKeRHead.fit: no few-shot image.')
        device = self.is_searched.device
        self.support_views = F.normalize(views.float(), dim=-1).to(
            device).contiguous()
        self.support_labels = labels.long().to(device)
        self._solve()

    def samples(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The support views ``Z`` ``(M, C)`` (row ``v * S + s`` is view
        ``v`` of image ``s``) and their labels ``(M, )``."""
        views = self.support_views
        return (views.reshape(-1, views.shape[-1]),
                self.support_labels.repeat(views.shape[0]))

    def landmarks(self) -> torch.Tensor:
        """Nystrom landmarks ``(m, C)``: each few-shot image's normalised
        views averaged and normalised (``S`` of them, in image order). With
        ``num_landmarks`` below ``S``, a seeded subset of them; above, all
        of them and ``num_landmarks - S`` seeded views (at most ``M``)."""
        images = F.normalize(self.support_views.mean(dim=0), dim=-1)
        m = self.num_landmarks
        if m is None or m == len(images):
            return images
        g = torch.Generator().manual_seed(self.landmark_seed)
        if m < len(images):
            keep = torch.randperm(len(images), generator=g)[:m].sort().values
            return images[keep.to(images.device)]
        z, _ = self.samples()
        extra = torch.randperm(len(z), generator=g)[:m - len(images)]
        return torch.cat([images, z[extra.sort().values.to(z.device)]])

    # -- the solve -----------------------------------------------------------
    def base_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """``(B, C) -> (B, N)`` float64 zero-shot base ``f T`` (zeros
        without the base)."""
        if not self.zero_shot_base:
            return feats.new_zeros(len(feats), self.num_classes,
                                   dtype=torch.float64)
        if not self.has_zero_shot_weights:
            self.clip_logits(feats)  # raises, naming what is missing
        return feats.double() @ self.zero_shot_weights.double()

    def _residual(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Regression targets ``Y - base`` ``(M, N)`` float64."""
        return (F.one_hot(y, self.num_classes).double() -
                self.base_logits(z))

    def kernel_system(self, beta: float,
                      max_elements: Optional[int] = None) -> KernelSystem:
        """The regression at ``beta`` reduced to a :class:`KernelSystem`:
        exact (``G = k(Z, Z)``, ``b = Y - Z T``) when ``M <=
        exact_max_samples``, else Nystrom (``G = C^-1 k(L, Z) k(Z, L)
        C^-T``, ``b = C^-1 k(L, Z) (Y - Z T)``, ``C C^T = k(L, L) + jitter
        I``) with ``k(Z, L)`` built ``max_elements`` at a time."""
        self._require_support()
        max_elements = max_elements or self.max_elements
        z, y = self.samples()
        if self.uses_exact_solve:
            return KernelSystem(z, proker_kernel(z, z, beta),
                                self._residual(z, y), None)
        centres = self.landmarks()
        m = len(centres)
        k_ll = proker_kernel(centres, centres, beta)
        k_ll.diagonal().add_(self.jitter)
        chol, info = torch.linalg.cholesky_ex(k_ll)
        del k_ll
        if int(info) != 0:
            raise RuntimeError(
                f'ProKeRHead: k(L, L) + {self.jitter:g} I of the {m} '
                f'landmarks is not positive definite at beta={beta:g} (a '
                'repeated landmark?); raise jitter.')
        gram = z.new_zeros(m, m, dtype=torch.float64)
        rhs = z.new_zeros(m, self.num_classes, dtype=torch.float64)
        rows = max(1, max_elements // max(m, self.num_classes))
        for start in range(0, len(z), rows):
            k_zl = proker_kernel(z[start:start + rows], centres, beta)
            gram.addmm_(k_zl.t(), k_zl)
            rhs.addmm_(k_zl.t(),
                       self._residual(z[start:start + rows],
                                      y[start:start + rows]))
            del k_zl
        # G = C^-1 H C^-T, b = C^-1 g. G is symmetric up to rounding;
        # cholesky and eigh read its lower triangle only.
        gram = torch.linalg.solve_triangular(chol, gram, upper=False)
        gram = torch.linalg.solve_triangular(chol, gram.t(), upper=False)
        rhs = torch.linalg.solve_triangular(chol, rhs, upper=False)
        return KernelSystem(centres, gram, rhs, chol)

    @staticmethod
    def coefficients(system: KernelSystem,
                     lmbdas: Sequence[float]) -> Iterator[torch.Tensor]:
        """The coefficients ``(P, N)`` float64 of the predictor ``base +
        k(f, centres) @ coef`` at each lambda, in order; the factorisation
        of ``G`` is shared by all of them (see :data:`EIGH_MIN_LAMBDAS`)."""
        gram, rhs = system.gram, system.rhs
        if len(lmbdas) >= EIGH_MIN_LAMBDAS:
            evals, evecs = torch.linalg.eigh(gram)
            evals = evals.clamp(min=0)  # G is PSD; drop rounding below 0
            proj = evecs.t() @ rhs
            solutions = (evecs @ ((lmbda / (evals + lmbda))[:, None] * proj)
                         for lmbda in map(float, lmbdas))
        else:

            def solve(lmbda: float) -> torch.Tensor:
                factor = gram.clone()
                factor.diagonal().add_(lmbda)
                torch.linalg.cholesky(factor, out=factor)  # in place
                return lmbda * torch.cholesky_solve(rhs, factor)

            solutions = (solve(lmbda) for lmbda in map(float, lmbdas))
        for solution in solutions:
            if system.chol is not None:  # W = C^-T (lmbda (G + lmbda)^-1 b)
                solution = torch.linalg.solve_triangular(
                    system.chol.t(), solution, upper=True)
            yield solution

    def _solve(self) -> None:
        """Solve at the current ``(beta, lmbda)``; keep centres and
        coefficients."""
        params = self.hyperparameters
        system = self.kernel_system(params['beta'])
        coef = next(self.coefficients(system, [params['lmbda']]))
        self.centres = system.centres.float().contiguous()
        self.coef = coef.contiguous()

    def _require_support(self) -> None:
        if self.support_views.numel() == 0:
            raise RuntimeError(
                'ProKeRHead keeps no support views (not fitted, or a '
                'checkpoint without them): call fit() first.')

    # -- predictions ---------------------------------------------------------
    def kernel_logits(self,
                      feats: torch.Tensor,
                      centres: torch.Tensor,
                      coef: torch.Tensor,
                      beta: float,
                      max_elements: Optional[int] = None) -> torch.Tensor:
        """``k(f, centres) @ coef`` ``(B, N)`` float64, the kernel built
        ``max_elements`` at a time."""
        max_elements = max_elements or self.max_elements
        out = feats.new_zeros(len(feats), coef.shape[1], dtype=torch.float64)
        cols = max(1, max_elements // max(len(feats), 1))
        for start in range(0, len(centres), cols):
            out.addmm_(
                proker_kernel(feats, centres[start:start + cols], beta),
                coef[start:start + cols])
        return out

    def forward(self, feats: Features) -> torch.Tensor:
        """``f T + k(f, centres) @ coef`` ``(B, N)``."""
        f = self.pre_logits(feats)
        self._require_fitted()
        logits = self.base_logits(f) + self.kernel_logits(
            f, self.centres, self.coef, float(self.hyperparameter('beta')))
        return logits.float()

    # -- hyperparameters -----------------------------------------------------
    def set_hyperparameters(self, **params: float) -> None:
        """Set ``beta`` and/or ``lmbda``, and solve again from the kept
        support views."""
        if 'lmbda' in params and not float(params['lmbda']) > 0:
            raise ValueError(
                f'ProKeRHead: lmbda must be > 0, got {params["lmbda"]}.')
        super().set_hyperparameters(**params)
        if self.support_views.numel():
            self._solve()

    def set_zero_shot_weights(self, zero_shot_weights: torch.Tensor) -> None:
        """Store CLIP's text classifier ``(C, N)``; a fitted head with the
        zero-shot base solves again for its new residual."""
        super().set_zero_shot_weights(zero_shot_weights)
        if self.zero_shot_base and self.support_views.numel():
            self._solve()

    @property
    def num_shots(self) -> Optional[int]:
        """Shots per class of the fitted set (the median over classes with
        one), or None before fit."""
        if self.support_labels.numel() == 0:
            return None
        counts = torch.bincount(self.support_labels)
        return int(counts[counts > 0].median())

    def validation_free_hyperparameters(self) -> Dict[str, float]:
        """``(beta, lmbda)`` of ``validation_free`` for the shots of the
        fitted set (nearest entry in log scale); the constructor's values
        before fit."""
        shots = self.num_shots
        if shots is None:
            return self.fixed_hyperparameters()
        key = min(self.validation_free,
                  key=lambda k: (abs(math.log2(k) - math.log2(shots)), k))
        beta, lmbda = self.validation_free[key]
        return OrderedDict(beta=beta, lmbda=lmbda)

    def search_grid(self) -> 'OrderedDict[str, torch.Tensor]':
        return OrderedDict(
            beta=torch.linspace(*self.beta_range, dtype=torch.float64),
            lmbda=torch.linspace(*self.lmbda_range, dtype=torch.float64))

    def search_stages(self) -> List[SearchStage]:
        """One stage over ``(beta, lmbda)`` that takes the validation
        features in one call (``chunked=False``; :meth:`count_with` chunks
        them within ``max_elements``), so each beta's kernel system is
        built and solved once per search, not once per chunk."""
        return [
            SearchStage(self.search_grid(), _GridCounter(self),
                        chunked=False)
        ]

    @torch.no_grad()
    def grid_coefficients(
        self, max_elements: int
    ) -> Iterator[Tuple[int, int, torch.Tensor, List[torch.Tensor]]]:
        """Solve the search grid: yields ``(i, j, centres, coefs)``, the
        coefficients at lambdas ``j, j + 1, ...`` of the ``i``-th beta, as
        many at a time as fit ``max_elements`` (at least one)."""
        grid = self.search_grid()
        lmbdas = grid['lmbda'].tolist()
        for i, beta in enumerate(grid['beta'].tolist()):
            system = self.kernel_system(beta, max_elements)
            size = len(system.centres) * self.num_classes
            group = max(1, max_elements // size)
            coefs: List[torch.Tensor] = []
            first = 0
            for j, coef in enumerate(self.coefficients(system, lmbdas)):
                coefs.append(coef)
                if len(coefs) == group or j == len(lmbdas) - 1:
                    yield i, first, system.centres, coefs
                    first, coefs = j + 1, []

    def count_with(self, f: torch.Tensor, labels: torch.Tensor,
                   beta: float, centres: torch.Tensor,
                   coefs: Sequence[torch.Tensor],
                   max_elements: int) -> torch.Tensor:
        """Hits ``(len(coefs), )`` of ``base + k(f, centres) @ coef`` for
        each coefficient tensor (rows of ``f`` chunked so that the kernel
        block fits ``max_elements``). Ranked in float32, as forward's
        logits."""
        hits = torch.zeros(len(coefs), dtype=torch.int64)
        rows = max(1, max_elements // max(len(centres), self.num_classes))
        for start in range(0, len(f), rows):
            chunk = f[start:start + rows]
            base = self.base_logits(chunk)
            kernel = proker_kernel(chunk, centres, beta)
            for j, coef in enumerate(coefs):
                logits = (base + kernel @ coef).float()
                hits[j] += int(top1_hits(logits, labels[start:start + rows]))
        return hits

    @torch.no_grad()
    def count_correct(self, feats: Features, labels: torch.Tensor,
                      params: Dict[str, float],
                      max_elements: int = 2**26) -> torch.Tensor:
        """Hits at every ``(beta, lmbda)``: ``(n_beta, n_lmbda)`` int64.
        Solves the grid from the kept support views (nothing of the head
        changes)."""
        f, = self.check_feats(feats)
        self._require_support()
        grid = self.search_grid()
        betas = grid['beta'].tolist()
        counts = torch.zeros(len(betas), len(grid['lmbda']),
                             dtype=torch.int64)
        for i, first, centres, coefs in self.grid_coefficients(max_elements):
            counts[i, first:first + len(coefs)] = self.count_with(
                f, labels, betas[i], centres, coefs, max_elements)
        return counts


class _GridCounter:
    """``count_correct`` of one search. The first call solves every grid
    point and keeps the coefficients when all of them fit ``max_elements``
    elements, so that the following chunks of validation features only
    evaluate them; otherwise each call solves again
    (:meth:`ProKeRHead.count_correct`). It lives as long as the search
    (:meth:`ProKeRHead.search_stages` makes a new one each time)."""

    def __init__(self, head: ProKeRHead) -> None:
        self.head = head
        self.tables: Optional[list] = None
        self.fits: Optional[bool] = None

    @torch.no_grad()
    def __call__(self, feats: Features, labels: torch.Tensor,
                 params: Dict[str, float],
                 max_elements: int = 2**26) -> torch.Tensor:
        head = self.head
        if self.fits is None:
            head._require_support()
            grid = head.search_grid()
            points = len(grid['beta']) * len(grid['lmbda'])
            self.fits = (points * head.num_centres * head.num_classes <=
                         max_elements)
            if self.fits:
                self.tables = list(head.grid_coefficients(max_elements))
        if not self.fits:
            return head.count_correct(feats, labels, params, max_elements)
        f, = head.check_feats(feats)
        grid = head.search_grid()
        betas = grid['beta'].tolist()
        counts = torch.zeros(len(betas), len(grid['lmbda']),
                             dtype=torch.int64)
        for i, first, centres, coefs in self.tables:
            counts[i, first:first + len(coefs)] = head.count_with(
                f, labels, betas[i], centres, coefs, max_elements)
        return counts
