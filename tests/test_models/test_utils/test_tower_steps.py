"""open_clip's towers run step by step (models/utils/open_clip_towers.py)
equal open_clip's own forward; hooks and updates act where they say."""
import open_clip
import pytest
import torch

from tip_adapter_mm.models.utils import open_clip_towers as towers

#: Two layers so that a hook at layer 1 is inside the tower.
DEEP_VIT = {
    'embed_dim': 32,
    'vision_cfg': {'image_size': 64, 'layers': 2, 'width': 32,
                   'head_width': 16, 'patch_size': 16},
    'text_cfg': {'context_length': 77, 'vocab_size': 49408, 'width': 32,
                 'heads': 2, 'layers': 2},
}


@pytest.fixture(scope='module')
def clip(tmp_path_factory):
    import json
    path = tmp_path_factory.mktemp('deep_vit') / 'DeepTiny-ViT-test.json'
    path.write_text(json.dumps(DEEP_VIT))
    open_clip.add_model_config(str(path))
    torch.manual_seed(0)
    return open_clip.create_model('DeepTiny-ViT-test').eval()


def test_image_tower_equals_open_clip(clip):
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ours = towers.encode_image(clip.visual, images)
        # Updates that add zeros take the re-expressed attention path.
        zeros = towers.encode_image(
            clip.visual, images,
            qkv_update=lambda i, h: (torch.zeros_like(h), None, h * 0))
        theirs = clip.visual(images)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    torch.testing.assert_close(zeros, theirs, rtol=1e-5, atol=1e-6)


def test_text_tower_equals_open_clip(clip):
    tokens = open_clip.get_tokenizer('DeepTiny-ViT-test')(
        ['a photo of a dog.', 'a red apple'])
    with torch.no_grad():
        theirs = clip.encode_text(tokens)
        ours = towers.encode_text_embeddings(clip,
                                             clip.token_embedding(tokens),
                                             tokens)
        zeros = towers.encode_text_embeddings(
            clip, clip.token_embedding(tokens), tokens,
            qkv_update=lambda i, h: (h * 0, h * 0, h * 0))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    torch.testing.assert_close(zeros, theirs, rtol=1e-5, atol=1e-6)


def test_value_update_equals_a_changed_in_proj(clip):
    """Adding ``h @ U.T`` to the values equals open_clip's tower with
    ``U`` added to the value rows of layer 1's packed in_proj weight."""
    torch.manual_seed(1)
    images = torch.randn(2, 3, 64, 64)
    update = 0.1 * torch.randn(32, 32)
    with torch.no_grad():
        ours = towers.encode_image(
            clip.visual, images,
            qkv_update=lambda i, h: (None, None, h @ update.t()
                                     if i == 1 else None))
        attn = clip.visual.transformer.resblocks[1].attn
        saved = attn.in_proj_weight.detach().clone()
        attn.in_proj_weight[64:] += update
        theirs = clip.visual(images)
        attn.in_proj_weight.copy_(saved)
        plain = clip.visual(images)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert (ours - plain).abs().max() > 1e-3


def test_hook_sees_each_layer_and_extra_tokens_flow(clip):
    images = torch.randn(2, 3, 64, 64)
    seen = []
    prompt = torch.randn(1, 3, 32)

    def hook(i, x):
        seen.append((i, x.shape[1]))
        if i == 0:  # shallow prompts after the class token
            return torch.cat([x[:, :1], prompt.expand(len(x), -1, -1),
                              x[:, 1:]], dim=1)
        return x

    with torch.no_grad():
        out = towers.encode_image(clip.visual, images, before_block=hook)
        plain = clip.visual(images)
    assert seen == [(0, 17), (1, 20)]
    assert out.shape == (2, 32)
    assert (out - plain).abs().max() > 1e-3


def test_check_vit_names_what_is_missing():
    model = open_clip.create_model('RN50')
    with pytest.raises(ValueError, match='ModifiedResNet.*conv1|ViT'):
        towers.check_vit(model.visual, 'VPT')
