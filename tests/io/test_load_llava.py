"""Both published LLaVA-1.5 layouts, written from their descriptions on a tiny random model, load
into Llava with the source model's numbers; every bad tensor is named."""
import json

import pytest
import torch

from eas.errors import CheckpointError
from eas.io.checkpoint import load_model
from eas.io.load_llava import load_llava
from eas.model.config import LlamaConfig, LlavaConfig, VisionConfig
from eas.model.llava import Llava
from weights.convert_llava import main as convert_main
from helpers import hf_clip_config, hf_clip_tensors, hf_tensors, rel_err, save_hf_weights

# A vocabulary padded past the tokenizer's, as llava-hf pads 32000 + <image> to 32064.
CFG = LlavaConfig(llama=LlamaConfig.named("test", vocab_size=104, max_seq_len=512),
                  vision=VisionConfig(image_size=32, patch_size=8, width=128, layers=3, heads=2, output_dim=0),
                  feature_layer=-2)


@pytest.fixture(scope="module")
def source():
    return Llava(CFG).init_weights(torch.Generator().manual_seed(5)).eval()


def text_config(c: LlamaConfig) -> dict:
    return dict(model_type="llama", hidden_size=c.dim, intermediate_size=c.hidden_dim, num_attention_heads=c.n_heads,
                num_key_value_heads=c.n_kv_heads, num_hidden_layers=c.n_layers, rms_norm_eps=c.norm_eps,
                vocab_size=c.vocab_size, max_position_embeddings=c.max_seq_len, hidden_act="silu")


def projector(model, names) -> dict:
    p = model.adapter_projector
    return {f"{n}.{k}": getattr(getattr(p, ours), k) for ours, n in names.items() for k in ("weight", "bias")}


def write_original(model, folder, shards, fmt):
    tensors = hf_tensors(model.llama) | projector(model, {"linear_1": "model.mm_projector.0",
                                                         "linear_2": "model.mm_projector.2"})
    save_hf_weights(tensors, folder, shards, fmt)
    (folder / "config.json").write_text(json.dumps({
        **text_config(model.cfg.llama), "model_type": "llava_llama", "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "mm_vision_select_layer": -2, "mm_projector_type": "mlp2x_gelu", "mm_vision_select_feature": "patch"}))
    clip = folder.parent / "clip"
    save_hf_weights(hf_clip_tensors(model.vision_tower, projection=False), clip, 1, fmt)
    (clip / "config.json").write_text(json.dumps(hf_clip_config(model.cfg.vision)))
    return tensors, clip


def write_hf(model, folder, shards, fmt, newer=False):
    top = "model." if newer else ""
    llm = hf_tensors(model.llama, prefix="model.language_model." if newer else "language_model.model.",
                     head="lm_head.weight" if newer else "language_model.lm_head.weight")
    tensors = llm | hf_clip_tensors(model.vision_tower, prefix=f"{top}vision_tower.", projection=False) | \
        projector(model, {"linear_1": f"{top}multi_modal_projector.linear_1",
                          "linear_2": f"{top}multi_modal_projector.linear_2"})
    save_hf_weights(tensors, folder, shards, fmt)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llava", "image_token_index": 100, "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default", "projector_hidden_act": "gelu",
        "text_config": text_config(model.cfg.llama), "vision_config": hf_clip_config(model.cfg.vision)}))
    return tensors, None


def logits(model, gen):
    batch_tokens = torch.randint(1, 96, (2, 7), generator=gen)
    pixels = torch.randn(2, 3, 32, 32, generator=gen)
    with torch.no_grad():
        return model.image_tokens(pixels), model.llama(batch_tokens)


@pytest.mark.parametrize("layout,shards,fmt", [("original", 1, "bin"), ("original", 2, "safetensors"),
                                               ("hf", 1, "safetensors"), ("hf", 3, "bin"), ("hf-new", 2, "safetensors")])
def test_both_layouts_load_with_source_numbers(layout, shards, fmt, source, tmp_path):
    folder = tmp_path / "llava"
    if layout == "original":
        _, clip = write_original(source, folder, shards, fmt)
    else:
        _, clip = write_hf(source, folder, shards, fmt, newer=layout == "hf-new")
    (folder / "tokenizer.model").write_bytes(b"sentencepiece stand-in")
    loaded, tok = load_llava(folder, clip)
    assert tok == folder / "tokenizer.model"
    assert loaded.cfg.feature_blocks == 2 and loaded.cfg.llama.vocab_size == 104
    for ours, ref in zip(logits(loaded, torch.Generator().manual_seed(0)), logits(source, torch.Generator().manual_seed(0))):
        assert rel_err(ours, ref) < 1e-6


@pytest.mark.parametrize("layout,edit,needle", [
    ("original", lambda t: t.pop("model.mm_projector.2.bias"), r"missing keys: linear_2\.bias"),
    ("original", lambda t: t.update({"model.vision_tower.extra": torch.zeros(1)}), r"unexpected keys: model\.vision_tower\.extra"),
    ("hf", lambda t: t.update({"multi_modal_projector.linear_3.weight": torch.zeros(1)}),
     r"unexpected key multi_modal_projector\.linear_3\.weight"),
    ("hf", lambda t: t.update({"language_model.model.layers.1.mlp.up_proj.weight": torch.zeros(176, 60)}),
     r"layers\.1\.feed_forward\.w3\.weight: checkpoint \(176, 60\) vs model \(176, 64\)"),
    ("hf", lambda t: t.pop("vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.bias"),
     r"missing key vision_tower\.vision_model\.encoder\.layers\.0\.self_attn\.q_proj\.bias"),
])
def test_bad_tensor_is_named(layout, edit, needle, source, tmp_path):
    folder = tmp_path / "llava"
    tensors, clip = (write_original if layout == "original" else write_hf)(source, folder, 1, "safetensors")
    edit(tensors)
    (folder / "model.safetensors").unlink()
    save_hf_weights(tensors, folder)
    with pytest.raises(CheckpointError, match=needle) as err:
        load_llava(folder, clip)
    assert str(folder) in str(err.value)


def test_original_without_tower_or_with_other_projector(source, tmp_path):
    folder = tmp_path / "llava"
    write_original(source, folder, 1, "safetensors")
    with pytest.raises(CheckpointError, match="pass its CLIP folder with --clip"):
        load_llava(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "mm_projector_type": "linear"}))
    with pytest.raises(CheckpointError, match="mm_projector_type='linear' is not supported"):
        load_llava(folder, tmp_path / "clip")


def test_converter_round_trip_and_one_line_error(source, tmp_path, capsys):
    folder = tmp_path / "llava"
    write_hf(source, folder, 1, "safetensors")
    (folder / "tokenizer.model").write_bytes(b"sentencepiece stand-in")
    assert convert_main([str(folder), str(tmp_path / "out"), "--dtype", "float32"]) == 0
    converted = load_model(tmp_path / "out")
    assert isinstance(converted, Llava) and converted.cfg == load_llava(folder)[0].cfg
    for ours, ref in zip(logits(converted, torch.Generator().manual_seed(0)), logits(source, torch.Generator().manual_seed(0))):
        assert rel_err(ours, ref) < 1e-6
    assert convert_main([str(tmp_path / "missing"), str(tmp_path / "out2")]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "out2").exists()
