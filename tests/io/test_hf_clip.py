"""Hugging Face CLIP vision towers against an OpenAI-layout load of the same weights."""
import json

import pytest
import torch

from eas.errors import CheckpointError
from eas.io.load_clip import load_openai_clip, load_vision
from eas.io.load_hf_clip import load_hf_clip
from eas.model.config import VisionConfig
from eas.model.vit import VisionTransformer
from helpers import hf_clip_config, hf_clip_tensors, openai_clip_state, save_hf_weights

CFG = VisionConfig(image_size=32, patch_size=8, width=128, layers=3, heads=2, output_dim=24)


@pytest.fixture(scope="module")
def vit():
    return VisionTransformer(CFG).init_weights(torch.Generator().manual_seed(3)).eval()


def features(model, pixels):
    with torch.no_grad():
        return [model.hidden(pixels, n) for n in range(CFG.layers + 1)] + [model(pixels, [0, 2])]


@pytest.mark.parametrize("fmt,shards,layout", [("safetensors", 1, "clip"), ("bin", 1, "vision"),
                                               ("safetensors", 3, "vision"), ("bin", 2, "clip")])
def test_hf_clip_equals_openai_load(fmt, shards, layout, vit, tmp_path):
    """CLIPModel folders (text half dropped, visual_projection kept) and CLIPVisionModel folders
    (no projection), every file layout, give the numbers of the OpenAI-layout load."""
    torch.save(openai_clip_state(vit), tmp_path / "openai.pt")
    reference = load_openai_clip(tmp_path / "openai.pt")
    tensors = hf_clip_tensors(vit, projection=layout == "clip")
    config = hf_clip_config(CFG)
    if layout == "clip":
        tensors |= {"text_model.embeddings.token_embedding.weight": torch.zeros(5, 4), "logit_scale": torch.tensor(2.0)}
        config = {"model_type": "clip", "vision_config": config, "projection_dim": CFG.output_dim}
    save_hf_weights(tensors, tmp_path / "hf", shards, fmt)
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    loaded = load_vision(tmp_path / "hf")
    assert loaded.cfg == (CFG if layout == "clip" else VisionConfig(**{**CFG.__dict__, "output_dim": 0}))
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for ours, ref in zip(features(loaded, pixels), features(reference, pixels)):
        assert torch.equal(ours, ref)
    if layout == "clip":
        assert torch.equal(loaded.embed_image(pixels), reference.embed_image(pixels))


def test_config_inferred_without_config_json(vit, tmp_path):
    save_hf_weights(hf_clip_tensors(vit), tmp_path / "hf")
    assert load_hf_clip(tmp_path / "hf").cfg == CFG  # heads from the 64-wide rule


@pytest.mark.parametrize("edit,needle", [
    (lambda t: t.pop("vision_model.encoder.layers.1.self_attn.k_proj.weight"),
     r"missing key vision_model\.encoder\.layers\.1\.self_attn\.k_proj\.weight"),
    (lambda t: t.pop("vision_model.post_layernorm.bias"), r"missing keys: ln_post\.bias"),
    (lambda t: t.update({"vision_model.encoder.layers.0.mlp.fc3.weight": torch.zeros(2)}),
     r"unexpected keys: vision_model\.encoder\.layers\.0\.mlp\.fc3\.weight"),
    (lambda t: t.update({"vision_model.encoder.layers.2.mlp.fc2.weight": torch.zeros(128, 500)}),
     r"transformer\.resblocks\.2\.mlp\.c_proj\.weight: checkpoint \(128, 500\) vs model \(128, 512\)"),
    (lambda t: t.update({"vision_model.encoder.layers.0.self_attn.v_proj.bias": torch.zeros(7)}),
     r"self_attn\.v_proj\.bias \(7,\)"),
])
def test_bad_tower_names_the_tensor(edit, needle, vit, tmp_path):
    tensors = hf_clip_tensors(vit)
    edit(tensors)
    save_hf_weights(tensors, tmp_path / "hf")
    with pytest.raises(CheckpointError, match=needle) as err:
        load_hf_clip(tmp_path / "hf")
    assert str(tmp_path / "hf") in str(err.value)


@pytest.mark.parametrize("change,needle", [({"hidden_act": "gelu"}, "quick_gelu"),
                                           ({"num_hidden_layers": 4}, "num_hidden_layers=4")])
def test_unsupported_or_inconsistent_config(change, needle, vit, tmp_path):
    save_hf_weights(hf_clip_tensors(vit), tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**hf_clip_config(CFG), **change}))
    with pytest.raises(CheckpointError, match=needle):
        load_hf_clip(tmp_path / "hf")
