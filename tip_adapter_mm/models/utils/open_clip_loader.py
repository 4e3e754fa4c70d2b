"""Creating open_clip models from a name and a tag or a local checkpoint."""
import os
from typing import Optional

import open_clip
import torch
import torch.nn as nn

from .weight_files import (MMENGINE_CHECKPOINT_HINT, CheckpointFileError,
                           is_mmengine_checkpoint, read_weight_file,
                           shape_differences, underlying)


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
    except Exception as err:  # open_clip's bare asserts, torch's unpickler
        if pretrained and os.path.isfile(pretrained):
            raise CheckpointFileError(
                pretrained, 'open_clip model '
                f'{model_name!r} (model.backbone / model.text_encoder '
                'pretrained)',
                diagnose_open_clip_checkpoint(pretrained, model_name, err)
            ) from err
        raise
    return model.eval()


def diagnose_open_clip_checkpoint(path: str, model_name: str,
                                  err: BaseException) -> str:
    """Why ``path`` does not load into open_clip's ``model_name``: an
    MMEngine checkpoint, a file torch cannot read safely, or the keys and
    shapes that differ from the architecture."""
    underneath = underlying(err)
    try:
        loaded = read_weight_file(path)
    except Exception as load_err:
        if 'mmengine' in str(load_err):  # a global of MMEngine's refused
            return f'{MMENGINE_CHECKPOINT_HINT} {underneath}'
        weights_only = 'weights_only' in str(load_err)
        return ((
            'it holds Python objects that a safe load (weights_only=True) '
            'refuses; expected a state dict of tensors (an open_clip or '
            'OpenAI checkpoint). Do not pass weights_only=False for a file '
            'you did not write; re-save its state_dict with torch.save. '
            if weights_only else
            'it is not a readable checkpoint (truncated, or not a torch / '
            'safetensors file); expected an open_clip state-dict file. ')
            + underneath)
    if is_mmengine_checkpoint(loaded):
        return f'{MMENGINE_CHECKPOINT_HINT} {underneath}'
    if isinstance(loaded, torch.jit.ScriptModule):
        loaded = loaded.state_dict()
    if isinstance(loaded, dict) and 'state_dict' in loaded:
        loaded = loaded['state_dict']
    if not isinstance(loaded, dict):
        return (f'it holds a {type(loaded).__name__}, expected a state dict '
                f'{{key: tensor}}. {underneath}')
    loaded = {(k[len('module.'):] if k.startswith('module.') else k): v
              for k, v in loaded.items()}
    expected = {k: v.shape for k, v in open_clip.create_model(
        model_name).state_dict().items()}
    diff = shape_differences(expected, loaded)
    return ((f'its tensors are not those of {model_name!r} (another '
             f'architecture? check model_name and model_config_file): '
             f'{diff}. ' if diff else '') + underneath)
