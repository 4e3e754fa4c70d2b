"""open_clip's text tower run on prompts whose context words are learned
vectors (CoOp)."""
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn as nn

from ..utils.open_clip_towers import (BlockHook, QKVUpdate,
                                      encode_text_embeddings)

#: Where the class name goes among the context vectors.
CLASS_TOKEN_POSITIONS = ('end', 'middle', 'front')


class PromptedTextTower(nn.Module):
    """The frozen text tower of an open_clip ``CLIP`` model, encoding one
    prompt per class in which ``M`` learned context vectors stand for
    words.

    Each class's prompt is tokenised as ``[SOS] X x M <name> . [EOS]``
    (``X`` placeholders keep the positions); the embeddings of the
    placeholders are replaced by the context vectors ``ctx``, and the class
    name moves according to ``class_token_position``::

        'end':    [SOS] ctx_1 .. ctx_M <name> . [EOS]
        'middle': [SOS] ctx_1 .. ctx_{M//2} <name> ctx_{M//2+1} .. ctx_M
                  . [EOS]
        'front':  [SOS] <name> ctx_1 .. ctx_M . [EOS]

    The sequence then goes through the tower as ``CLIP.encode_text`` sends
    token embeddings: plus the positional embedding, the transformer with
    its causal mask, ``ln_final``, the feature at the end-of-text token
    (the argmax of the token ids), times ``text_projection``.

    Args:
        clip: An open_clip ``CLIP`` model (``token_embedding``,
            ``positional_embedding``, ``transformer``, ``attn_mask``,
            ``ln_final``, ``text_projection``); its visual tower may be
            gone. Kept frozen.
        tokenizer: open_clip's tokenizer of the model (callable on a list
            of texts, ``(T, L)`` ids; ``encode(text)`` gives a text's BPE
            ids).
        class_names: ``N`` class names, in label order (underscores become
            spaces, as in the zero-shot prompts).
        num_context (int): ``M``.
        class_token_position (str): ``'end'``, ``'middle'`` or
            ``'front'``.
    """

    def __init__(self, clip: nn.Module, tokenizer: Callable,
                 class_names: Sequence[str], num_context: int,
                 class_token_position: str = 'end') -> None:
        super().__init__()
        for part in ('token_embedding', 'positional_embedding',
                     'transformer', 'ln_final', 'text_projection'):
            if not hasattr(clip, part):
                raise TypeError(
                    f'PromptedTextTower needs an open_clip CLIP model with '
                    f'a {part}; {type(clip).__name__} has none (models '
                    'with a separate text module, e.g. CustomTextCLIP, '
                    'are not supported).')
        pool = getattr(clip, 'text_pool_type', 'argmax')
        if pool != 'argmax':
            raise ValueError(
                f"PromptedTextTower pools at the end-of-text token (open_"
                f"clip's text_pool_type 'argmax'); this model pools with "
                f"'{pool}'.")
        if class_token_position not in CLASS_TOKEN_POSITIONS:
            raise ValueError(
                f'class_token_position must be one of '
                f'{CLASS_TOKEN_POSITIONS}, got {class_token_position!r}.')
        if int(num_context) < 1:
            raise ValueError(f'num_context must be >= 1, got {num_context}.')
        self.clip = clip.requires_grad_(False).eval()
        self.num_context = int(num_context)
        self.class_token_position = class_token_position
        names = [name.replace('_', ' ') for name in class_names]
        self.name_lengths: List[int] = [
            len(tokenizer.encode(name)) for name in names
        ]
        placeholders = ' '.join(['X'] * self.num_context)
        tokens = tokenizer([f'{placeholders} {name}.' for name in names])
        context_length = tokens.shape[1]
        for name, length in zip(names, self.name_lengths):
            # SOS, context, name, '.', EOS must fit.
            if 1 + self.num_context + length + 2 > context_length:
                raise ValueError(
                    f'The prompt of class {name!r} ({self.num_context} '
                    f'context vectors + {length} name tokens) does not fit '
                    f"the tower's {context_length} tokens.")
        self.register_buffer('tokens', tokens, persistent=False)

    @property
    def width(self) -> int:
        """``D``: the width of the token embeddings (of ``ctx``)."""
        return self.clip.token_embedding.weight.shape[1]

    @property
    def num_classes(self) -> int:
        return self.tokens.shape[0]

    def train(self, mode: bool = True) -> 'PromptedTextTower':
        """Always in eval mode: the tower is frozen."""
        return super().train(False)

    @torch.no_grad()
    def word_embeddings(self, text: str, tokenizer: Callable) -> torch.Tensor:
        """``(T, D)``: the token embeddings of the words of ``text`` (no
        SOS/EOS), e.g. to start the context from ``'a photo of a'``."""
        ids = torch.tensor(tokenizer.encode(text),
                           device=self.tokens.device, dtype=torch.long)
        return self.clip.token_embedding(ids).float()

    def prompt_embeddings(self, ctx: torch.Tensor) -> torch.Tensor:
        """Token embeddings of the ``N`` prompts ``(N, L, D)``, from the
        context ``(M, D)`` (shared by the classes) or ``(N, M, D)`` (one
        per class)."""
        n, m = self.num_classes, self.num_context
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(n, -1, -1)
        if ctx.shape[:2] != (n, m):
            raise ValueError(
                f'Expected a context (M, D) or (N, M, D) with N={n}, M={m}, '
                f'got {tuple(ctx.shape)}.')
        with torch.no_grad():
            embedded = self.clip.token_embedding(self.tokens)
        embedded = embedded.to(ctx.dtype)
        prefix = embedded[:, :1]  # SOS
        suffix = embedded[:, 1 + m:]  # name, '.', EOS, padding
        if self.class_token_position == 'end':
            return torch.cat([prefix, ctx, suffix], dim=1)
        half = m // 2
        prompts = []
        for i, length in enumerate(self.name_lengths):
            name, rest = suffix[i:i + 1, :length], suffix[i:i + 1, length:]
            c = ctx[i:i + 1]
            if self.class_token_position == 'middle':
                parts = [prefix[i:i + 1], c[:, :half], name, c[:, half:],
                         rest]
            else:  # 'front'
                parts = [prefix[i:i + 1], name, c, rest]
            prompts.append(torch.cat(parts, dim=1))
        return torch.cat(prompts, dim=0)

    def forward(self,
                ctx: torch.Tensor,
                before_block: Optional[BlockHook] = None,
                qkv_update: Optional[QKVUpdate] = None) -> torch.Tensor:
        """Raw (unnormalised) text features ``(N, C)`` of the prompts built
        with the context ``ctx`` (``(M, D)`` or ``(N, M, D)``).
        ``before_block`` and ``qkv_update`` act inside the tower (deep
        prompts, low-rank updates; see :func:`encode_text_embeddings`)."""
        return encode_text_embeddings(self.clip, self.prompt_embeddings(ctx),
                                      self.tokens, before_block,
                                      qkv_update).float()
