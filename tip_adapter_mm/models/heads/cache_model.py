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
                      max_elements: int = 2**26) -> torch.Tensor:
        """Correct top-1 predictions of ``base_logits + alpha *
        cache_logits(beta)`` at every ``(beta, alpha)``, vectorised.

        Args:
            feats: L2-normalised features ``(M, C)``.
            labels: ``(M, )``.
            betas: ``(nb, )``; alphas: ``(na, )``.
            base_logits: ``(M, N)`` logits the cache term is added to
                (zero-shot CLIP, another cache); None for the term alone.
            values: ``(NK, N)`` instead of the stored values.
            affinity: ``(M, NK)`` if already computed for ``feats``.
            max_elements: Bound on the elements of the ``(b, M, NK)`` and
                ``(a, b, M, N)`` temporaries; betas and alphas are chunked
                to it.

        Returns:
            int64 ``(nb, na)`` on the CPU.
        """
        values = self.values if values is None else values
        if affinity is None:
            affinity = self.affinity(feats)
        distance = 1 - affinity  # (M, NK)
        betas = betas.to(feats.device, torch.float32)
        alphas = alphas.to(feats.device, torch.float32)
        num, num_keys = distance.shape
        num_classes = values.shape[1]
        beta_chunk = max(1, min(len(betas), max_elements //
                                max(num * max(num_keys, num_classes), 1)))
        alpha_chunk = max(1, min(len(alphas), max_elements //
                                 max(beta_chunk * num * num_classes, 1)))
        correct = torch.empty(len(betas), len(alphas), dtype=torch.int64)
        for b0 in range(0, len(betas), beta_chunk):
            beta = betas[b0:b0 + beta_chunk, None, None]  # (b, 1, 1)
            # One (b, M, NK) temporary: exponentiate in place.
            cache = (distance * -beta).exp_() @ values  # (b, M, N)
            for a0 in range(0, len(alphas), alpha_chunk):
                alpha = alphas[a0:a0 + alpha_chunk, None, None, None]
                if base_logits is None:
                    logits = alpha * cache
                else:
                    # base + alpha * cache without a second (a, b, M, N)
                    logits = torch.addcmul(base_logits, alpha, cache)
                correct[b0:b0 + beta_chunk, a0:a0 + alpha_chunk] = top1_hits(
                    logits, labels).t().cpu()
        return correct

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        resize_from_state_dict(self, state_dict, prefix, ('keys', 'values'))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
