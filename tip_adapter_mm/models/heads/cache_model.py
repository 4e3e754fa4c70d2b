"""The key-value cache model of Tip-Adapter, as one component.

Tip-Adapter, its two-cache sibling, the cache alone and APE hold one (or
two) of these; the cache term and its count over a ``(beta, alpha)`` grid
live here and nowhere else.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...evaluation import top1_hits
from .base_head import resize_from_state_dict


class KeyValueCache(nn.Module):
    """Keys, values and sharpness of a cache model::

        cache_logits(f) = exp(-beta * (1 - f @ keys.T)) @ values

    for L2-normalised features ``f`` ``(B, C)``.

    Tensors (empty until built; resized when a checkpoint is loaded):
        keys ``(NK, C)``: L2-normalised few-shot features; a learnable
            parameter when ``learnable_keys`` (Tip-Adapter-F's bias-free
            linear layer), else a buffer.
        values ``(NK, N)``: one-hot labels of the keys.
        beta: float64 scalar, the sharpness of the affinities.

    Args:
        num_classes (int): N.
        beta (float): Initial sharpness.
        learnable_keys (bool): Make the keys a trainable parameter.
    """

    def __init__(self,
                 num_classes: int,
                 beta: float = 1.0,
                 learnable_keys: bool = False) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.learnable_keys = bool(learnable_keys)
        if self.learnable_keys:
            self.keys = nn.Parameter(torch.zeros(0, 0))
        else:
            self.register_buffer('keys', torch.zeros(0, 0))
        self.register_buffer('values', torch.zeros(0, self.num_classes))
        self.register_buffer('beta',
                             torch.tensor(float(beta), dtype=torch.float64))

    @property
    def is_built(self) -> bool:
        return self.keys.numel() > 0

    def build(self, view_feats: torch.Tensor, labels: torch.Tensor) -> None:
        """Tip-Adapter's cache from ``V`` augmented views: the raw features
        ``(V, S, C)`` averaged per image, then L2-normalised, are the keys;
        the one-hot ``labels`` ``(S, )`` are the values."""
        self.set(F.normalize(view_feats.float().mean(dim=0), dim=-1),
                 F.one_hot(labels.long(), self.num_classes).float())

    def set(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store keys ``(NK, C)`` and values ``(NK, N)`` on this module's
        device."""
        if keys.dim() != 2 or values.shape != (keys.shape[0],
                                               self.num_classes):
            raise ValueError(
                f'Expected cache keys (NK, C) and values (NK, '
                f'{self.num_classes}), got {tuple(keys.shape)} and '
                f'{tuple(values.shape)}.')
        device = self.values.device
        keys = keys.detach().float().to(device).contiguous()
        if isinstance(self.keys, nn.Parameter):
            # Keep the parameter object: an optimizer may already hold it.
            self.keys.data = keys
        else:
            self.keys = keys
        self.values = values.detach().float().to(device).contiguous()

    def _require_built(self) -> None:
        if not self.is_built:
            raise RuntimeError(
                'The cache model has no keys yet: fit the head (add '
                'BuildCacheHook to custom_hooks, or call head.fit()), or '
                'load a checkpoint that holds them.')

    def affinity(self, feats: torch.Tensor) -> torch.Tensor:
        """``(B, C) -> (B, NK)`` cosine similarities to the keys."""
        self._require_built()
        return feats @ self.keys.t()

    def logits(self,
               feats: torch.Tensor,
               beta: Optional[float] = None,
               values: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Cache logits ``(B, N)`` at ``beta`` (default: the current one),
        with ``values`` ``(NK, N)`` instead of the stored ones if given."""
        beta = self.beta if beta is None else beta
        values = self.values if values is None else values
        return torch.exp(-beta * (1 - self.affinity(feats))) @ values

    @torch.no_grad()
    def count_correct(self,
                      feats: torch.Tensor,
                      labels: torch.Tensor,
                      betas: torch.Tensor,
                      alphas: torch.Tensor,
                      base_logits: Optional[torch.Tensor] = None,
                      values: Optional[torch.Tensor] = None,
                      affinity: Optional[torch.Tensor] = None,
                      max_elements: int = 2**26,
                      block_elements: int = 2**20) -> torch.Tensor:
        """Correct top-1 predictions of ``base_logits + alpha *
        cache_logits(beta)`` at every ``(beta, alpha)``, vectorised.

        With one-hot values (Tip-Adapter's cache), or one-hot rows scaled
        per key (APE's refined values), the product with the values is a
        (weighted) sum of the affinities of each class's keys: N times
        fewer operations than the ``(NK, N)`` matmul, which other values
        keep (:class:`ClassSums`).

        Args:
            feats: L2-normalised features ``(M, C)``.
            labels: ``(M, )``.
            betas: ``(nb, )``; alphas: ``(na, )``.
            base_logits: ``(M, N)`` logits the cache term is added to
                (zero-shot CLIP, another cache); None for the term alone.
            values: ``(NK, N)`` instead of the stored values.
            affinity: ``(M, NK)`` if already computed for ``feats``.
            max_elements: Bound on the elements of each temporary: the
                ``(b, m, NK)`` exponentials, the ``(b, m, N)`` cache logits
                and the ``(a, b, m, N)`` logits, for ``b`` betas, ``a``
                alphas and ``m`` samples at a time, chunked to it (at least
                one sample and one point). A call holds about five such
                float32 temporaries at a time (these and the top-1 count's):
                ``20 * min(max_elements, block_elements)`` bytes above its
                inputs, the ``(M, N)`` base logits and a copy of the keys in
                class order.
            block_elements: The size of the blocks actually visited when
                smaller than ``max_elements``: a speed setting (the default
                suits CPU caches and GPUs alike), not a memory bound.

        Returns:
            int64 ``(nb, na)`` on the CPU.
        """
        values = self.values if values is None else values
        sums = ClassSums(values)
        if affinity is None:
            self._require_built()
            keys = sums.arrange(self.keys.detach(), dim=0)  # (NK, C)
            num, num_keys = len(feats), len(keys)
        else:
            num, num_keys = affinity.shape
        betas = betas.to(feats.device, torch.float32)
        alphas = alphas.to(feats.device, torch.float32)
        labels = labels.to(feats.device)
        num_classes = values.shape[1]
        # Blocks of at most `block` elements: small enough to stay in the
        # CPU's caches (fewer page faults and memory round trips), large
        # enough to amortise the per-operation overhead.
        block = max(1, min(int(max_elements), int(block_elements)))
        widest = max(num_keys, num_classes, 1)
        rows = max(1, min(num, block // widest))
        beta_chunk = max(1, min(len(betas), block // (rows * widest)))
        alpha_chunk = max(1, min(len(alphas), block //
                                 max(beta_chunk * rows * num_classes, 1)))
        correct = torch.zeros(len(betas), len(alphas), dtype=torch.int64,
                              device=feats.device)
        for r0 in range(0, num, rows):
            # exp(-beta * (1 - A)) = exp(beta * (A - 1)), keys in sums' order
            if affinity is None:
                block = (feats[r0:r0 + rows] @ keys.t()).sub_(1)  # (m, NK)
            else:
                block = sums.arrange(affinity[r0:r0 + rows]) - 1
            block_labels = labels[r0:r0 + rows]
            base = None if base_logits is None else base_logits[r0:r0 + rows]
            for b0 in range(0, len(betas), beta_chunk):
                beta = betas[b0:b0 + beta_chunk, None, None]  # (b, 1, 1)
                # One (b, m, NK) temporary, exponentiated in place.
                cache = sums(torch.mul(block, beta).exp_())  # (b, m, N)
                for a0 in range(0, len(alphas), alpha_chunk):
                    alpha = alphas[a0:a0 + alpha_chunk, None, None, None]
                    if base is None:
                        logits = alpha * cache
                    else:
                        # base + alpha * cache: one (a, b, m, N) temporary
                        logits = torch.addcmul(base, alpha, cache)
                    correct[b0:b0 + beta_chunk,
                            a0:a0 + alpha_chunk] += top1_hits(
                                logits, block_labels).t()
        return correct.cpu()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        resize_from_state_dict(self, state_dict, prefix, ('keys', 'values'))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ClassSums:
    """``x @ values`` over the last dimension of ``x`` ``(..., NK)``, for
    cache values ``(NK, N)``.

    Values with one non-zero per row (one-hot labels; APE's refined values,
    which scale each key's one-hot row) make the product a sum of each
    class's entries, each times its key's value (a multiplication skipped
    when all are 1). With ``K`` keys in every class the keys are arranged
    shot-major (:meth:`arrange`: column ``k * N + n`` is class ``n``'s
    ``k``-th key) and summed over the ``K`` axis; unequal classes are summed
    with ``index_add_``; any other values keep the matmul. The sums add the
    same terms as the matmul, in another order (equal up to float
    rounding).

    Args:
        values: ``(NK, N)``.
    """

    def __init__(self, values: torch.Tensor) -> None:
        self.values = values
        self.num_classes = values.shape[1]
        self.key_labels: Optional[torch.Tensor] = None
        self.weights: Optional[torch.Tensor] = None  # (NK, ), in order
        self.order: Optional[torch.Tensor] = None
        self.shots: Optional[int] = None
        if not has_one_entry_per_row(values):
            return
        self.key_labels = (values != 0).int().argmax(dim=1)
        weights = values.gather(1, self.key_labels[:, None]).squeeze(1)
        if not bool((weights == 1).all()):
            self.weights = weights
        counts = torch.bincount(self.key_labels, minlength=self.num_classes)
        if bool((counts == counts[0]).all()) and counts[0]:
            self.shots = int(counts[0])
            # stable sort by class, then read shot-major: k * N + n
            by_class = torch.argsort(self.key_labels, stable=True)
            self.order = by_class.view(self.num_classes, self.shots).t(
            ).reshape(-1)
            if self.weights is not None:
                self.weights = self.weights[self.order]

    @property
    def mode(self) -> str:
        """'equal' (reshape and sum), 'unequal' (index_add_) or 'matmul'."""
        if self.shots is not None:
            return 'equal'
        return 'matmul' if self.key_labels is None else 'unequal'

    def arrange(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """``x`` with its keys (dimension ``dim``, of size NK) in the order
        :meth:`__call__` expects (a copy when reordered)."""
        if self.order is None:
            return x
        return x.index_select(dim, self.order.to(x.device))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., NK)`` arranged by :meth:`arrange` -> ``(..., N)``."""
        if self.key_labels is None:
            return x @ self.values.to(x.dtype)
        if self.weights is not None:
            x = x * self.weights.to(x)
        if self.shots is not None:
            return x.unflatten(-1, (self.shots, self.num_classes)).sum(-2)
        out = x.new_zeros(x.shape[:-1] + (self.num_classes, ))
        return out.index_add_(x.dim() - 1, self.key_labels.to(x.device), x)


def has_one_entry_per_row(values: torch.Tensor) -> bool:
    """Whether every row of ``values`` ``(NK, N)`` has exactly one
    non-zero entry (a one-hot row times a scalar)."""
    if values.dim() != 2 or not values.numel():
        return False
    return bool(((values != 0).sum(dim=1) == 1).all())
