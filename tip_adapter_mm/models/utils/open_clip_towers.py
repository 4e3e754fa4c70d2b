"""open_clip's towers run step by step, so that a method can act between
their layers: insert prompt tokens (VPT, MaPLe), replace them at a layer
(deep prompts) or add low-rank updates to the attention projections
(CLIP-LoRA).

Each function re-expresses a piece of open_clip's forward (open_clip
``transformer.py``: ``VisionTransformer``, ``ResidualAttentionBlock``;
``model.py``: ``CLIP.encode_text``) for the towers of the CLIP models:
a ViT with a class token, ``ln_post`` on that token and ``proj``; a text
transformer pooled at the end-of-text token. With no hook and no update
they give what open_clip gives (tests compare them within float32
round-off); anything else raises ``ValueError`` naming what is missing.
"""
from functools import partial
from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

#: ``(layer index, tokens (B, L, W)) -> tokens (B, L', W)``, called before
#: each block.
BlockHook = Callable[[int, torch.Tensor], torch.Tensor]
#: ``(layer index, normalised block input (B, L, W)) -> (dq, dk, dv)``,
#: each ``(B, L, W)`` or None: added to the block's query, key and value
#: projections.
Update = Tuple[Optional[torch.Tensor], Optional[torch.Tensor],
               Optional[torch.Tensor]]
QKVUpdate = Callable[[int, torch.Tensor], Update]


def check_vit(visual: nn.Module, method: str) -> None:
    """Raise ValueError unless ``visual`` is an open_clip ViT tower this
    module can run (class token, no attention pooler, batch-first)."""
    needed = ('conv1', 'class_embedding', 'positional_embedding', 'ln_pre',
              'transformer', 'ln_post')
    missing = [name for name in needed if not hasattr(visual, name)]
    if missing:
        raise ValueError(
            f'{method} puts tokens into a ViT image tower; the model\'s '
            f'tower is a {type(visual).__name__} without {missing}. Use an '
            "open_clip ViT (e.g. model_name='ViT-B-16').")
    if getattr(visual, 'attn_pool', None) is not None:
        raise ValueError(f'{method}: ViT towers with an attention pooler '
                         '(CoCa) are not supported.')
    if getattr(visual, 'pool_type', 'tok') != 'tok' or getattr(
            visual, 'final_ln_after_pool', False):
        raise ValueError(
            f'{method}: the ViT tower must pool its class token after '
            f"ln_post (open_clip's pool_type 'tok'), got pool_type "
            f'{getattr(visual, "pool_type", None)!r}.')
    if not getattr(visual.transformer, 'batch_first', True):
        raise ValueError(f'{method}: the ViT tower must be batch-first.')


def vit_embed(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Patch and class tokens of ``images`` ``(B, 3, H, W)`` with their
    positional embeddings, after ``ln_pre``: ``(B, 1 + P, W)``."""
    x = visual.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1)
    x = torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)
    x = x + visual.positional_embedding.to(x.dtype)
    x = visual.patch_dropout(x)
    return visual.ln_pre(x)


def vit_pool(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The image embedding ``(B, C)`` from the last block's tokens ``(B, L,
    W)``: ``ln_post`` of the class token, times ``proj``."""
    pooled = visual.ln_post(x[:, 0])
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return pooled


def block_forward(block: nn.Module,
                  x: torch.Tensor,
                  attn_mask: Optional[torch.Tensor] = None,
                  update: Optional[Callable] = None) -> torch.Tensor:
    """One open_clip ``ResidualAttentionBlock`` on ``x`` ``(B, L, W)``.

    Without ``update`` this is the block's own forward. With it, the
    attention is computed here from the packed ``in_proj`` weights, with
    ``update(h)``'s ``(dq, dk, dv)`` (``h = ln_1(x)``) added to the query,
    key and value projections.
    """
    if update is None:
        return block(x, attn_mask=attn_mask)
    attn = block.attn
    if not isinstance(attn, nn.MultiheadAttention) or not attn.batch_first:
        raise ValueError('Updates of the attention projections need '
                         "open_clip's batch-first nn.MultiheadAttention "
                         f'blocks, got {type(attn).__name__}.')
    h = block.ln_1(x)
    q, k, v = F.linear(h, attn.in_proj_weight,
                       attn.in_proj_bias).chunk(3, dim=-1)
    dq, dk, dv = update(h)
    q = q if dq is None else q + dq
    k = k if dk is None else k + dk
    v = v if dv is None else v + dv
    b, length, width = q.shape
    heads = attn.num_heads

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, -1, heads, width // heads).transpose(1, 2)

    mask = attn_mask.to(q.dtype) if attn_mask is not None else None
    out = F.scaled_dot_product_attention(split(q), split(k), split(v),
                                         attn_mask=mask)
    out = out.transpose(1, 2).reshape(b, length, width)
    out = attn.out_proj(out)
    x = x + block.ls_1(out)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def run_blocks(transformer: nn.Module,
               x: torch.Tensor,
               attn_mask: Optional[torch.Tensor] = None,
               before_block: Optional[BlockHook] = None,
               qkv_update: Optional[QKVUpdate] = None) -> torch.Tensor:
    """open_clip's (batch-first) ``Transformer`` on ``x`` ``(B, L, W)``,
    calling ``before_block(i, x)`` before block ``i`` and adding
    ``qkv_update(i, h)`` to its attention projections."""
    for i, block in enumerate(transformer.resblocks):
        if before_block is not None:
            x = before_block(i, x)
        update = None if qkv_update is None else partial(qkv_update, i)
        x = block_forward(block, x, attn_mask, update)
    return x


def encode_image(visual: nn.Module,
                 images: torch.Tensor,
                 before_block: Optional[BlockHook] = None,
                 qkv_update: Optional[QKVUpdate] = None) -> torch.Tensor:
    """open_clip's ViT on ``images`` ``(B, 3, H, W)`` with hooks: the
    unnormalised image embedding ``(B, C)``. A hook that adds tokens must
    keep the class token first."""
    x = vit_embed(visual, images)
    x = run_blocks(visual.transformer, x, None, before_block, qkv_update)
    return vit_pool(visual, x)


def encode_text_embeddings(clip: nn.Module,
                           embeddings: torch.Tensor,
                           tokens: torch.Tensor,
                           before_block: Optional[BlockHook] = None,
                           qkv_update: Optional[QKVUpdate] = None
                           ) -> torch.Tensor:
    """open_clip's ``CLIP.encode_text`` from token embeddings ``(T, L, W)``
    (possibly with learned vectors in them) of the token ids ``tokens``
    ``(T, L)``, which give the end-of-text positions (their argmax):
    unnormalised text features ``(T, C)``. Hooks as :func:`run_blocks`;
    they must keep the sequence length."""
    cast_dtype = clip.transformer.get_cast_dtype()
    x = embeddings.to(cast_dtype) + clip.positional_embedding.to(cast_dtype)
    x = run_blocks(clip.transformer, x, clip.attn_mask, before_block,
                   qkv_update)
    x = clip.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    projection = clip.text_projection
    if projection is None:
        return x
    if isinstance(projection, nn.Linear):
        return projection(x)
    return x @ projection
