"""The zero-shot classifier W of CLIP (docs/method.md)."""
from typing import Callable, List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F


def build_zero_shot_weights(encode_text: Callable[[List[str]], torch.Tensor],
                            class_names: Sequence[str],
                            templates: Sequence[str],
                            return_raw_norms: bool = False
                            ) -> Union[torch.Tensor, Tuple[torch.Tensor,
                                                           torch.Tensor]]:
    """Text weights ``W`` of shape ``(C, N)``.

    For each class: format every template with the class name (underscores
    become spaces), encode, L2-normalise each prompt's feature, average over
    templates and L2-normalise again.

    Args:
        encode_text: Maps ``T`` prompts to raw text features ``(T, C)``.
        class_names: ``N`` class names.
        templates: Prompt templates, each with one ``{}``.
        return_raw_norms: Also return the norms ``(N, )`` of each class's
            mean *raw* prompt feature (the scale of the text prototypes that
            TaskRes and CLAP train from).
    """
    prompts = [
        template.format(name.replace('_', ' ')) for name in class_names
        for template in templates
    ]
    raw = encode_text(prompts).float().view(len(class_names), len(templates),
                                            -1)
    feats = F.normalize(raw, dim=-1).mean(dim=1)
    weights = F.normalize(feats, dim=-1).t().contiguous()
    if not return_raw_norms:
        return weights
    return weights, raw.mean(dim=1).norm(dim=-1)
