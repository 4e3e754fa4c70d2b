"""The zero-shot classifier W of CLIP (docs/method.md)."""
from typing import Callable, List, Sequence

import torch
import torch.nn.functional as F


def build_zero_shot_weights(encode_text: Callable[[List[str]], torch.Tensor],
                            class_names: Sequence[str],
                            templates: Sequence[str]) -> torch.Tensor:
    """Text weights ``W`` of shape ``(C, N)``.

    For each class: format every template with the class name (underscores
    become spaces), encode, L2-normalise each prompt's feature, average over
    templates and L2-normalise again.

    Args:
        encode_text: Maps ``T`` prompts to raw text features ``(T, C)``.
        class_names: ``N`` class names.
        templates: Prompt templates, each with one ``{}``.
    """
    prompts = [
        template.format(name.replace('_', ' ')) for name in class_names
        for template in templates
    ]
    feats = F.normalize(encode_text(prompts).float(), dim=-1)
    feats = feats.view(len(class_names), len(templates), -1).mean(dim=1)
    return F.normalize(feats, dim=-1).t().contiguous()
