"""LP++: a linear probe blended with CLIP's text classifier."""
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from mmpretrain.registry import MODELS
from ...evaluation import top1_hits
from ...structures import Features
from .zero_shot_head import ZeroShotHead

_DTYPES = {'float32': torch.float32, 'float64': torch.float64}


def snapshot_epochs(epochs: int, interval: int,
                    extra: Optional[int] = None) -> List[int]:
    """Epochs after which LP++ keeps its variables: every ``interval``-th,
    the last, and ``extra`` if it is one of ``1..epochs``; increasing."""
    kept = set(range(interval, epochs + 1, interval)) | {epochs}
    if extra is not None and 1 <= extra <= epochs:
        kept.add(int(extra))
    return sorted(kept)


@MODELS.register_module()
class LPPlusPlusHead(ZeroShotHead):
    """LP++ (Huang et al., "LP++: A Surprisingly Strong Linear Probe for
    Few-Shot CLIP", CVPR 2024) for L2-normalised features ``f`` ``(B, D)``::

        logits = f @ weight + bias + alpha * (f @ zero_shot_weights)

    ``weight`` ``(D, N)`` (visual class prototypes), ``bias`` ``(N, )`` and
    the per-class blending ``alpha`` ``(N, )`` are fitted by full-batch
    descent on the mean cross-entropy of the ``M = V * S`` support samples
    (every augmented view normalised on its own), with the data-derived
    steps and initialisation of the official code
    (FereshteShakeri/FewShot-CLIP-Strong-Baseline, methods/
    linear_probe_p2.py). With ``F`` ``(M, D)`` the samples, ``T`` the text
    classifier ``zero_shot_weights`` ``(D, N)`` (no logit scale) and ``Z =
    F @ T``:

    * ``weight`` starts at the class sums of the samples divided by ``V``
      (the official code sums its one view per image), ``bias`` at 0 (the
      official code keeps ``nn.Linear``'s random bias), every ``alpha_c``
      at ``init_alpha_scale * mean_c(mean_{i in c} Z_ic)``;
    * ``weight`` and ``bias`` take SGD steps with momentum ``momentum``
      (PyTorch's rule) and step size ``4 M / lambda_max(F^T F)`` every
      epoch;
    * ``alpha`` takes a gradient step of size ``M / (4 max_c sum_i
      Z_ic^2)`` every ``alpha_update_interval`` epochs, along its gradient
      summed over all epochs so far (``accumulate_alpha_grad``: the
      official code never zeroes it) or along the current epoch's.

    The gradients of an epoch are taken at the same point, before its
    steps. ``(weight, bias, alpha)`` are kept after every
    ``snapshot_interval``-th epoch and after the last one, in checkpoints
    too (``D x N`` floats each: 4 MB for ImageNet with RN50, 123 MB for 30
    snapshots). The hyperparameter ``epoch``
    chooses the snapshot the head predicts with: the official code keeps
    the epoch that is best on a K-shot validation set (the latest among
    ties); here a search visits the snapshot epochs, latest first (so ties
    go to the latest), and the validation-free value is the last epoch.

    Args:
        num_classes (int): N.
        epochs (int): Epochs of descent (300 in the official code).
        alpha_update_interval (int): Epochs between steps of ``alpha``.
        momentum (float): Of the steps of ``weight`` and ``bias``.
        init_alpha_scale (float): Scale of the initial ``alpha`` (250).
        accumulate_alpha_grad (bool): Step ``alpha`` along its gradient
            summed since the first epoch (the official code's behaviour).
        snapshot_interval (int): Epochs between kept snapshots.
        epoch (int, optional): The fixed epoch to predict with; default
            the last.
        solver_dtype (str): ``'float32'`` or ``'float64'``.
        clip_logit_scale, loss, topk, init_cfg: As :class:`ZeroShotHead`
            (the zero-shot logits of LP++ are not scaled).
    """

    class_agnostic = False  # fitted per class
    dynamic_buffers = ZeroShotHead.dynamic_buffers + (
        'snapshot_weights', 'snapshot_bias', 'snapshot_alpha',
        'snapshot_epochs')
    method_name = 'LP++'

    def __init__(self,
                 num_classes: int,
                 epochs: int = 300,
                 alpha_update_interval: int = 10,
                 momentum: float = 0.9,
                 init_alpha_scale: float = 250.0,
                 accumulate_alpha_grad: bool = True,
                 snapshot_interval: int = 10,
                 epoch: Optional[int] = None,
                 solver_dtype: str = 'float32',
                 clip_logit_scale: float = 100.0,
                 loss: dict = dict(type='CrossEntropyLoss', loss_weight=1.0),
                 topk: Union[int, Tuple[int]] = (1, ),
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(
            num_classes,
            clip_logit_scale=clip_logit_scale,
            loss=loss,
            topk=topk,
            init_cfg=init_cfg)
        for name, value in (('epochs', epochs),
                            ('alpha_update_interval', alpha_update_interval),
                            ('snapshot_interval', snapshot_interval)):
            if int(value) < 1:
                raise ValueError(f'LPPlusPlusHead: {name} must be >= 1, got '
                                 f'{value}.')
        if solver_dtype not in _DTYPES:
            raise ValueError(f'LPPlusPlusHead: solver_dtype must be one of '
                             f'{list(_DTYPES)}, got {solver_dtype!r}.')
        self.epochs = int(epochs)
        self.alpha_update_interval = int(alpha_update_interval)
        self.momentum = float(momentum)
        self.init_alpha_scale = float(init_alpha_scale)
        self.accumulate_alpha_grad = bool(accumulate_alpha_grad)
        self.snapshot_interval = int(snapshot_interval)
        self.solver_dtype = solver_dtype
        epoch = self.epochs if epoch is None else int(epoch)
        if not 1 <= epoch <= self.epochs:
            raise ValueError(f'LPPlusPlusHead: epoch must be in [1, '
                             f'{self.epochs}], got {epoch}.')
        self.register_hyperparameter('epoch', epoch)
        self.register_buffer('snapshot_weights',
                             torch.zeros(0, 0, self.num_classes))
        self.register_buffer('snapshot_bias', torch.zeros(0,
                                                          self.num_classes))
        self.register_buffer('snapshot_alpha',
                             torch.zeros(0, self.num_classes))
        self.register_buffer('snapshot_epochs',
                             torch.zeros(0, dtype=torch.long))

    # -- fitting -------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self.snapshot_epochs.numel() > 0

    @torch.no_grad()
    def fit(self, view_feats: Features, labels: torch.Tensor) -> None:
        """Run the descent on every normalised view and keep the snapshots.

        Args:
            view_feats: Raw features ``((V, S, D), )``.
            labels: ``(S, )``.
        """
        views, = self.check_views(view_feats, labels)
        if not self.has_zero_shot_weights:
            self.clip_logits(views[0])  # raises, naming the remedies
        num_views, _, dims = views.shape
        self.check_every_class(labels)
        device = self.zero_shot_weights.device
        dtype = _DTYPES[self.solver_dtype]
        feats = F.normalize(views.to(device, dtype).reshape(-1, dims), dim=-1)
        targets = labels.to(device).long().repeat(num_views)  # row v*S + s
        keep = snapshot_epochs(self.epochs, self.snapshot_interval,
                               int(self.hyperparameter('epoch')))
        weights, biases, alphas = self.descend(
            feats, targets, self.zero_shot_weights.to(dtype), num_views,
            keep)
        self.snapshot_weights = weights.float().contiguous()
        self.snapshot_bias = biases.float().contiguous()
        self.snapshot_alpha = alphas.float().contiguous()
        self.snapshot_epochs = torch.tensor(keep, dtype=torch.long,
                                            device=device)

    def descend(self, feats: torch.Tensor, targets: torch.Tensor,
                text: torch.Tensor, num_views: int, keep: List[int]
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The LP++ descent (see the class).

        Args:
            feats: ``(M, D)`` normalised samples.
            targets: ``(M, )`` labels.
            text: ``(D, N)`` text classifier.
            num_views: ``V`` (the initial weights are class sums over it).
            keep: Epochs (counted from 1) after which to keep the variables.

        Returns:
            ``weight`` ``(K, D, N)``, ``bias`` ``(K, N)``, ``alpha`` ``(K,
            N)`` after each epoch of ``keep``.
        """
        num = len(feats)
        one_hot = F.one_hot(targets, self.num_classes).to(feats.dtype)
        text_logits = feats @ text  # Z (M, N)
        counts = one_hot.sum(dim=0)
        weight = feats.t() @ one_hot / num_views  # (D, N)
        bias = feats.new_zeros(self.num_classes)
        class_means = (one_hot * text_logits).sum(dim=0) / counts
        alpha = torch.full_like(bias,
                                float(self.init_alpha_scale *
                                      class_means.mean()))
        gram = feats.t() @ feats
        lr_weight = 4.0 * num / float(
            torch.linalg.eigvalsh(gram.double()).max())
        lr_alpha = num / (4.0 * float((text_logits**2).sum(dim=0).max()))

        kept_w, kept_b, kept_a = [], [], []
        buf_w = buf_b = None
        alpha_grad = torch.zeros_like(alpha)
        for epoch in range(1, self.epochs + 1):
            logits = feats @ weight + bias + alpha * text_logits
            residual = (torch.softmax(logits, dim=1) - one_hot) / num
            grad_w = feats.t() @ residual
            grad_b = residual.sum(dim=0)
            grad_a = (residual * text_logits).sum(dim=0)
            if buf_w is None:
                buf_w, buf_b = grad_w, grad_b
            else:
                buf_w = self.momentum * buf_w + grad_w
                buf_b = self.momentum * buf_b + grad_b
            weight = weight - lr_weight * buf_w
            bias = bias - lr_weight * buf_b
            alpha_grad = (alpha_grad + grad_a
                          if self.accumulate_alpha_grad else grad_a)
            if epoch % self.alpha_update_interval == 0:
                alpha = alpha - lr_alpha * alpha_grad
            if epoch in keep:
                kept_w.append(weight)
                kept_b.append(bias)
                kept_a.append(alpha)
        return (torch.stack(kept_w), torch.stack(kept_b),
                torch.stack(kept_a))

    # -- the snapshot in use -------------------------------------------------
    def _index(self, epoch: float) -> int:
        found = torch.nonzero(self.snapshot_epochs == int(epoch)).flatten()
        if int(epoch) != epoch or not len(found):
            raise ValueError(
                f'LPPlusPlusHead: epoch {epoch} is not a kept snapshot; the '
                f'snapshots are after epochs '
                f'{self.snapshot_epochs.tolist()} (snapshot_interval='
                f'{self.snapshot_interval}).')
        return int(found[0])

    def set_hyperparameters(self, **params: float) -> None:
        """Set ``epoch``: the snapshot the head predicts with (one of the
        kept epochs once fitted)."""
        if 'epoch' in params:
            epoch = float(params['epoch'])
            if self.is_fitted:
                self._index(epoch)
            elif not (epoch == int(epoch) and 1 <= epoch <= self.epochs):
                raise ValueError(f'LPPlusPlusHead: epoch must be an integer '
                                 f'in [1, {self.epochs}], got {epoch}.')
        super().set_hyperparameters(**params)

    def snapshot(self, epoch: Optional[float] = None
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(weight (D, N), bias (N, ), alpha (N, ))`` after ``epoch``
        (default: the current ``epoch``)."""
        self._require_fitted()
        i = self._index(float(self.hyperparameter('epoch'))
                        if epoch is None else epoch)
        return (self.snapshot_weights[i], self.snapshot_bias[i],
                self.snapshot_alpha[i])

    def forward(self, feats: Features) -> torch.Tensor:
        """Logits ``(B, N)``."""
        f = self.pre_logits(feats)
        weight, bias, alpha = self.snapshot()
        return f @ weight + bias + alpha * (f @ self.zero_shot_weights)

    # -- search --------------------------------------------------------------
    def search_grid(self) -> 'OrderedDict[str, torch.Tensor]':
        """The kept epochs, latest first (the first best wins a search: the
        latest, as in the official code). Empty before fitting."""
        epochs = self.snapshot_epochs.flip(0).cpu().to(torch.float64)
        return OrderedDict(epoch=epochs) if len(epochs) else OrderedDict()

    @torch.no_grad()
    def count_correct(self, feats: Features, labels: torch.Tensor,
                      params: Dict[str, float],
                      max_elements: int = 2**26) -> torch.Tensor:
        """Correct predictions of every snapshot, in :meth:`search_grid`'s
        order."""
        f, = self.check_feats(feats)
        self._require_fitted()
        order = torch.arange(len(self.snapshot_epochs) - 1, -1, -1,
                             device=f.device)
        text_logits = f @ self.zero_shot_weights  # (M, N)
        per_point = max(1, text_logits.numel())
        chunk = max(1, min(len(order), max_elements // per_point))
        correct = torch.empty(len(order), dtype=torch.int64)
        for start in range(0, len(order), chunk):
            idx = order[start:start + chunk]
            logits = (torch.einsum('md,kdn->kmn', f,
                                   self.snapshot_weights[idx]) +
                      self.snapshot_bias[idx, None, :] +
                      self.snapshot_alpha[idx, None, :] * text_logits)
            correct[start:start + chunk] = top1_hits(logits, labels).cpu()
        return correct
