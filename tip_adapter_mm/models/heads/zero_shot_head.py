"""Heads that add a few-shot term to zero-shot CLIP."""
import torch

from .base_cache_head import BaseCacheHead


class ZeroShotCacheHead(BaseCacheHead):
    """Base of heads whose logits are zero-shot CLIP plus a few-shot term:
    ``clip_logit_scale * f @ zero_shot_weights + ...``.

    Buffers: ``zero_shot_weights`` ``(C, N)``, set by the classifier from
    the prompts (empty until then), besides the cache.

    Args:
        num_classes (int): N.
        clip_logit_scale (float): Scale of the zero-shot logits; 100, the
            learned scale of released CLIP models. The classifier replaces
            it with the model's own ``logit_scale.exp()`` when asked.
        **kwargs: As :class:`BaseCacheHead`.
    """

    dynamic_buffers = ('cache_keys', 'cache_values', 'zero_shot_weights')

    def __init__(self,
                 num_classes: int,
                 clip_logit_scale: float = 100.0,
                 **kwargs) -> None:
        super().__init__(num_classes, **kwargs)
        self.register_hyperparameter('clip_logit_scale', clip_logit_scale)
        self.register_buffer('zero_shot_weights',
                             torch.zeros(0, self.num_classes))

    # -- zero-shot part ------------------------------------------------------
    @property
    def has_zero_shot_weights(self) -> bool:
        return self.zero_shot_weights.numel() > 0

    def set_zero_shot_weights(self, zero_shot_weights: torch.Tensor) -> None:
        """Store text weights ``(C, N)``."""
        if (zero_shot_weights.dim() != 2
                or zero_shot_weights.shape[1] != self.num_classes):
            raise ValueError(
                f'Expected zero_shot_weights (C, {self.num_classes}), got '
                f'{tuple(zero_shot_weights.shape)}: the head has '
                f'num_classes={self.num_classes}.')
        self.zero_shot_weights = zero_shot_weights.detach().float().to(
            self.cache_values.device).contiguous()

    def clip_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """``(B, C) -> (B, N)`` zero-shot logits."""
        if not self.has_zero_shot_weights:
            raise RuntimeError(
                f'{type(self).__name__} has no zero_shot_weights yet: they '
                'are built by BuildCacheHook, or loaded from a checkpoint.')
        return self.clip_logit_scale * feats @ self.zero_shot_weights
