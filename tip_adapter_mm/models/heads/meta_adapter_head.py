"""Meta-Adapter: class embeddings refined by attention over the support
features of their class, with a network that does not depend on the
classes."""
import math
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmpretrain.registry import MODELS
from ...structures import Features
from .zero_shot_head import ZeroShotHead


@MODELS.register_module()
class MetaAdapterHead(ZeroShotHead):
    """Meta-Adapter (Cheng et al., "Meta-Adapter: An Online Few-shot
    Learner for Vision-Language Model", NeurIPS 2023; official code
    github.com/ArsenalCheng/Meta-Adapter, ``main.py`` and ``clip/utils.py``
    at commit dc1d9c0) for L2-normalised image features ``f`` ``(B, C)``.

    For each class ``n``, with ``t_n`` its CLIP text embedding (column ``n``
    of ``zero_shot_weights``) and ``s_n1 .. s_nK`` its support features::

        x_n     = [t_n; s_n1; ...; s_nK]                          (K+1, C)
        a_n     = softmax((W_q t_n) . (W_k x_nj) / sqrt(C), over j)  (K+1, )
        g_n     = sigmoid(w_g . t_n + b_g)                         scalar
        w'_n    = normalize(t_n + g_n * sum_j a_nj x_nj)             (C, )
        logits  = clip_logit_scale * f @ [w'_1 ... w'_N]            (B, N)

    Where each part comes from (``main.py`` unless named):

    - ``MetaAdapter`` (lines 27-65): a single-head cross-attention whose
      query is the class text embedding and whose keys and values are the
      text embedding itself followed by the class's K support features
      (lines 47-49); only the query and the keys are projected (``q_proj``,
      ``k_proj``: bias-free ``C x C``, lines 32-33), the values are the raw
      tokens; the scale is ``1 / sqrt(C)`` (line 57). The paper calls the
      block a gated multi-head attention; the official module is built
      with its default ``num_heads=1`` (line 75), and its reshapes only
      work for one head, so this head has one.
    - The gate (lines 34, 60-61): ``alpha_proj``, a ``Linear(C, 1)`` of the
      text embedding, through a sigmoid, scales the attended vector.
    - The residual and the normalisation (lines 63-64): ``t + g * attn``,
      L2-normalised; the logits are 100 times the cosine with it (line 99;
      ``clip_logit_scale``). Zero-shot CLIP is kept through this residual
      (the official logits have no separate zero-shot term): a gate of 0
      gives zero-shot CLIP exactly.
    - Initialisation (lines 37-41): Xavier-uniform ``W_q``, ``W_k``,
      ``w_g``; ``b_g = 1`` (so the refinement starts on, with ``g`` about
      ``sigmoid(1)``; not zero-shot CLIP).
    - The support features (``clip/utils.py``, ``build_cache_model``, lines
      38-56): the raw features of the augmented views of each few-shot
      image averaged over the views, then L2-normalised; one token per
      image (``main.py`` line 83 reshapes them to ``(N, K, C)``).

    **Choices here.** (1) The official reshape needs exactly K images per
    class (its few-shot sampler repeats images to fill K); here a class
    with fewer images has padded slots masked out of the softmax, which is
    the same computation when every class has K. (2) ``(W_q t) . (W_k x)``
    is computed as ``(W_k^T W_q t) . x`` (equal; it costs ``N C^2`` instead
    of ``N K C^2``). (3) float32 where the official code runs the adapter
    in CLIP's fp16.

    **What is learned.** ``q_proj``, ``k_proj``, ``gate_weight``,
    ``gate_bias``: ``2 C^2 + C + 1`` numbers, none per class. :meth:`fit`
    stores the support features; it creates the adapter only when the head
    has none (a trained head keeps its weights), so a head trained on some
    classes is applied to others by giving it their text embeddings and
    fitting it on their support views, without a gradient step
    (:attr:`class_agnostic`; :meth:`forget_classes`).

    **Training** (configs/_base_/schedules/meta_adapter.py) is
    cross-entropy on these logits over the stored support views. In the
    official code the training queries are base-class few-shot images
    (``main.py`` lines 92-101) drawn apart from the support set, but after
    each step their features replace the oldest support features of their
    class (lines 113-116), so from the second epoch on the queries and the
    support are the same images; here they are the same images from the
    start (a query is one stored view of an image whose view average is in
    its class's support).

    Args:
        num_classes (int): N.
        gate_bias_init (float): ``b_g`` at creation (1, the official init).
        clip_logit_scale, loss, topk, init_cfg: As :class:`ZeroShotHead`.
    """

    dynamic_buffers = ZeroShotHead.dynamic_buffers + (
        'support', 'support_mask', 'q_proj', 'k_proj', 'gate_weight',
        'gate_bias')
    method_name = 'Meta-Adapter'
    uses_text = True
    class_agnostic = True

    def __init__(self,
                 num_classes: int,
                 gate_bias_init: float = 1.0,
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
        self.gate_bias_init = float(gate_bias_init)
        # The adapter, created by fit() once C is known.
        self.q_proj = nn.Parameter(torch.zeros(0, 0))
        self.k_proj = nn.Parameter(torch.zeros(0, 0))
        self.gate_weight = nn.Parameter(torch.zeros(0, 0))
        self.gate_bias = nn.Parameter(torch.zeros(0))
        # Support features (N, K, C), L2-normalised, and which slots hold
        # an image (N, K); saved in checkpoints.
        self.register_buffer('support', torch.zeros(self.num_classes, 0, 0))
        self.register_buffer(
            'support_mask', torch.zeros(self.num_classes, 0,
                                        dtype=torch.bool))

    # -- fitting -------------------------------------------------------------
    @property
    def has_adapter(self) -> bool:
        return self.q_proj.numel() > 0

    @property
    def is_fitted(self) -> bool:
        return (self.has_adapter and self.support.numel() > 0
                and self.support.shape[0] == self.num_classes)

    def init_adapter(self, channels: int) -> None:
        """Create the adapter for ``channels`` C with the official init:
        Xavier-uniform ``q_proj``, ``k_proj`` ``(C, C)`` and
        ``gate_weight`` ``(1, C)``; ``gate_bias`` ``(1, )`` =
        ``gate_bias_init``."""
        device = self.is_searched.device
        with torch.no_grad():
            for name, shape in (('q_proj', (channels, channels)),
                                ('k_proj', (channels, channels)),
                                ('gate_weight', (1, channels))):
                weight = torch.empty(shape, device=device)
                nn.init.xavier_uniform_(weight)
                getattr(self, name).data = weight
            self.gate_bias.data = torch.full((1, ),
                                             self.gate_bias_init,
                                             device=device)

    def fit(self, view_feats: Features, labels: torch.Tensor) -> None:
        """Store the support features of the ``S`` few-shot images from
        their views ``((V, S, C), )`` and labels ``(S, )``: per image the
        mean of its V raw view features, L2-normalised, grouped by class
        in the order of ``labels``. Creates the adapter if the head has
        none; a head with one keeps it (nothing here is learned)."""
        views, = self.check_views(view_feats, labels)
        self.check_every_class(labels)
        channels = views.shape[-1]
        if not self.has_adapter:
            self.init_adapter(channels)
        elif self.q_proj.shape[1] != channels:
            raise ValueError(
                'MetaAdapterHead.fit: the adapter takes '
                f'{self.q_proj.shape[1]} channels, the views have '
                f'{channels} (another encoder?).')
        device = self.is_searched.device
        shots = F.normalize(views.float().mean(dim=0), dim=-1).to(device)
        labels = labels.long().to(device)
        counts = torch.bincount(labels, minlength=self.num_classes)
        # Slot of each image within its class: its rank among the images
        # of its class, in the order given.
        order = torch.argsort(labels, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        slots = torch.empty_like(labels)
        slots[order] = torch.arange(len(labels), device=device) - \
            starts[labels[order]]
        support = shots.new_zeros(self.num_classes, int(counts.max()),
                                  channels)
        mask = torch.zeros(support.shape[:2], dtype=torch.bool,
                           device=device)
        support[labels, slots] = shots
        mask[labels, slots] = True
        self.support = support
        self.support_mask = mask

    def forget_classes(self, num_classes: int) -> None:
        """Also drop the support features (class-specific); keep the
        adapter. Fit on the new classes' views afterwards."""
        super().forget_classes(num_classes)
        self.support = self.support.new_zeros(self.num_classes, 0, 0)
        self.support_mask = self.support_mask.new_zeros(self.num_classes, 0)

    # -- logits --------------------------------------------------------------
    def refined_weights(self) -> torch.Tensor:
        """The refined class embeddings ``w'`` ``(N, C)``, L2-normalised."""
        self._require_fitted()
        if not self.has_zero_shot_weights:
            raise RuntimeError(
                'MetaAdapterHead has no zero_shot_weights yet: the '
                'classifier builds them from its text_encoder '
                '(BuildCacheHook), set_zero_shot_weights() sets them, or a '
                'checkpoint holds them.')
        text = self.zero_shot_weights.t().to(self.q_proj.dtype)  # (N, C)
        tokens = torch.cat([text[:, None], self.support], dim=1)
        keep = torch.cat([
            torch.ones_like(self.support_mask[:, :1]), self.support_mask
        ], dim=1)  # (N, K + 1)
        # (W_q t) . (W_k x) = ((W_q t) W_k) . x
        query = (text @ self.q_proj.t()) @ self.k_proj  # (N, C)
        scores = torch.einsum('nkc,nc->nk', tokens, query)
        scores = scores / math.sqrt(text.shape[1])
        scores = scores.masked_fill(~keep, float('-inf'))
        attended = torch.einsum('nk,nkc->nc', scores.softmax(dim=1), tokens)
        gate = torch.sigmoid(text @ self.gate_weight.t() + self.gate_bias)
        return F.normalize(text + gate * attended, dim=-1)

    def forward(self, feats: Features) -> torch.Tensor:
        """Meta-Adapter logits ``(B, N)``."""
        f = self.pre_logits(feats)
        return self.clip_logit_scale * f @ self.refined_weights().t()
