"""The key-value cache model of Tip-Adapter, as plain functions.

``cache_logits = exp(-beta * (1 - f @ cache_keys.T)) @ cache_values``
(SPEC section 1), and its top-1 count over a ``(beta, alpha)`` grid. The
heads that hold a cache (:class:`TipAdapterHead`, its two-cache sibling,
:class:`CacheOnlyHead`) all compute it here.
"""
from typing import Optional

import torch


def cache_logits(feats: torch.Tensor, cache_keys: torch.Tensor,
                 cache_values: torch.Tensor,
                 beta: torch.Tensor) -> torch.Tensor:
    """Cache logits ``(B, N)``.

    Args:
        feats: L2-normalised features ``(B, C)``.
        cache_keys: ``(NK, C)``.
        cache_values: ``(NK, N)``.
        beta: Scalar sharpness.
    """
    affinity = feats @ cache_keys.t()
    return torch.exp(-beta * (1 - affinity)) @ cache_values


@torch.no_grad()
def count_correct_on_grid(feats: torch.Tensor,
                          cache_keys: torch.Tensor,
                          cache_values: torch.Tensor,
                          labels: torch.Tensor,
                          betas: torch.Tensor,
                          alphas: torch.Tensor,
                          base_logits: Optional[torch.Tensor] = None,
                          max_elements: int = 2**26) -> torch.Tensor:
    """Correct top-1 predictions of ``base_logits + alpha * cache_logits``
    at every ``(beta, alpha)``, vectorised.

    Args:
        feats: L2-normalised features ``(M, C)``.
        cache_keys: ``(NK, C)``; cache_values: ``(NK, N)``.
        labels: ``(M,)``.
        betas: ``(nb,)``; alphas: ``(na,)``.
        base_logits: ``(M, N)`` logits the cache term is added to (zero-shot
            CLIP, another cache); None for the cache term alone.
        max_elements: Bound on the elements of the ``(b, M, NK)`` and
            ``(a, b, M, N)`` temporaries; betas and alphas are chunked to it.

    Returns:
        int64 ``(nb, na)`` on the CPU.
    """
    betas = betas.to(feats.device, torch.float32)
    alphas = alphas.to(feats.device, torch.float32)
    distance = 1 - feats @ cache_keys.t()  # (M, NK)
    num, num_keys = distance.shape
    num_classes = cache_values.shape[1]
    beta_chunk = max(1, min(len(betas), max_elements //
                            max(num * max(num_keys, num_classes), 1)))
    alpha_chunk = max(1, min(len(alphas), max_elements //
                             max(beta_chunk * num * num_classes, 1)))
    correct = torch.empty(len(betas), len(alphas), dtype=torch.int64)
    for b0 in range(0, len(betas), beta_chunk):
        beta = betas[b0:b0 + beta_chunk, None, None]  # (b, 1, 1)
        # One (b, M, NK) temporary: exponentiate in place.
        logits_c = (distance * -beta).exp_() @ cache_values  # (b, M, N)
        for a0 in range(0, len(alphas), alpha_chunk):
            alpha = alphas[a0:a0 + alpha_chunk, None, None, None]
            if base_logits is None:
                logits = alpha * logits_c
            else:
                # base + alpha * cache without a second (a, b, M, N) tensor
                logits = torch.addcmul(base_logits, alpha, logits_c)
            hits = logits.argmax(dim=-1) == labels  # (a, b, M)
            correct[b0:b0 + beta_chunk, a0:a0 + alpha_chunk] = hits.sum(
                dim=-1).t().cpu()
    return correct
