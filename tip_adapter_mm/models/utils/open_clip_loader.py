"""Creating open_clip models from a name and a tag or a local checkpoint."""
import os
from typing import Optional

import open_clip
import torch.nn as nn


def create_open_clip_model(model_name: str,
                           pretrained: Optional[str] = None,
                           model_config_file: Optional[str] = None,
                           cache_dir: Optional[str] = None) -> nn.Module:
    """Build an open_clip model and load its weights, in eval mode.

    Args:
        model_name (str): An open_clip architecture ('RN50', 'ViT-B-16',
            ...), or the stem of ``model_config_file``.
        pretrained (str, optional): An open_clip pretrained tag ('openai',
            'laion2b_s34b_b79k', ...), downloaded by open_clip, or the path
            of a local checkpoint file. ``None`` keeps random weights.
        model_config_file (str, optional): A JSON architecture file in
            open_clip's format, registered with ``open_clip.add_model_config``
            under its file stem (for architectures open_clip doesn't ship).
        cache_dir (str, optional): Where open_clip keeps downloads.
    """
    if model_config_file is not None:
        if not os.path.isfile(model_config_file):
            raise FileNotFoundError(
                f'model_config_file {model_config_file!r} does not exist; '
                "expected an open_clip JSON config with 'embed_dim', "
                "'vision_cfg' and 'text_cfg'.")
        open_clip.add_model_config(model_config_file)
    if model_name not in open_clip.list_models():
        raise ValueError(
            f'Unknown open_clip model_name {model_name!r}. Use one of '
            'open_clip.list_models() or give model_config_file.')
    if pretrained:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        looks_like_path = (os.sep in pretrained or pretrained.endswith(
            ('.pt', '.pth', '.bin', '.safetensors', '.ckpt')))
        if pretrained not in tags and not os.path.isfile(pretrained):
            raise FileNotFoundError(
                f'pretrained={pretrained!r} for {model_name!r} is '
                + ('a checkpoint path that does not exist' if looks_like_path
                   else 'neither a known open_clip tag nor an existing file')
                + f'. Expected an open_clip state-dict file or one of the '
                f'tags {tags}.')
    try:
        model = open_clip.create_model(
            model_name, pretrained=pretrained or None, cache_dir=cache_dir)
    except RuntimeError as err:
        if pretrained and os.path.isfile(pretrained):
            raise RuntimeError(
                f'Checkpoint {pretrained!r} does not match open_clip model '
                f'{model_name!r}: {err}') from err
        raise
    return model.eval()
