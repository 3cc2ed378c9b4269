"""CLIP visual tower vs a sequence-first nn.MultiheadAttention reference; CLIP loading; preprocessing."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from eas.model.config import VisionConfig
from eas.errors import CheckpointError, ImageError
from eas.model.image import load_image
from eas.io.load_clip import load_openai_clip, load_vision
from eas.model.vit import VisionTransformer
from helpers import rel_err

# Heads 64 wide, as in every OpenAI ViT, so the loader's shape inference applies.
CLIP_CFG = VisionConfig(image_size=32, patch_size=8, width=128, layers=2, heads=2, output_dim=24)



def reference_cls(vit: VisionTransformer, pixels: torch.Tensor) -> list[torch.Tensor]:
    """CLS after every block, computed the way OpenAI's CLIP does: sequence-first, nn.MultiheadAttention."""
    cfg, sd = vit.cfg, vit.state_dict()
    patches = F.conv2d(pixels, sd["conv1.weight"], stride=cfg.patch_size)  # [B, C, g, g]
    x = patches.reshape(pixels.shape[0], cfg.width, -1).permute(2, 0, 1)  # [N, B, C]
    x = torch.cat([sd["class_embedding"].expand(1, pixels.shape[0], -1), x]) + sd["positional_embedding"][:, None]
    x = F.layer_norm(x, (cfg.width,), sd["ln_pre.weight"], sd["ln_pre.bias"])
    out = []
    for i in range(cfg.layers):
        p = f"transformer.resblocks.{i}."
        mha = nn.MultiheadAttention(cfg.width, cfg.heads)
        mha.load_state_dict({k: sd[p + "attn." + k] for k in
                             ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")})
        h = F.layer_norm(x, (cfg.width,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
        x = x + mha(h, h, h, need_weights=False)[0]
        h = F.layer_norm(x, (cfg.width,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        h = h @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"]
        x = x + (h * torch.sigmoid(1.702 * h)) @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]
        out.append(x[0])
    return out


def reference_embedding(vit: VisionTransformer, pixels: torch.Tensor) -> torch.Tensor:
    sd = vit.state_dict()
    cls = reference_cls(vit, pixels)[-1]
    return F.layer_norm(cls, (vit.cfg.width,), sd["ln_post.weight"], sd["ln_post.bias"]) @ sd["proj"]


@pytest.mark.parametrize("cfg", [VisionConfig.named("test"), CLIP_CFG])
def test_taps_and_embedding_match_reference(cfg, gen):
    vit = VisionTransformer(cfg).init_weights(gen).eval()
    pixels = torch.randn(2, 3, cfg.image_size, cfg.image_size, generator=gen)
    blocks = [0, cfg.layers - 1]
    with torch.no_grad():
        ref = reference_cls(vit, pixels)
        taps = vit(pixels, blocks)
        assert taps.shape == (2, 2, cfg.width)
        for j, b in enumerate(blocks):
            assert rel_err(taps[:, j], ref[b]) < 1e-5
        assert rel_err(vit.embed_image(pixels), reference_embedding(vit, pixels)) < 1e-5


def test_layernorm_runs_in_fp32_inside_fp16(gen):
    vit = VisionTransformer(VisionConfig.named("test")).init_weights(gen)
    x = torch.randn(2, 5, 48, generator=gen) * 300 + 1000  # fp16 statistics would lose this
    ln = vit.ln_pre.half()
    expected = F.layer_norm(x.half().float(), (48,), ln.weight.float(), ln.bias.float())
    assert ln(x.half()).dtype == torch.float16
    assert (ln(x.half()).float() - expected).abs().max().item() < 2e-3


def test_bad_tap_blocks_rejected(gen):
    vit = VisionTransformer(VisionConfig.named("test"))
    with pytest.raises(ValueError, match="tap blocks"):
        vit(torch.zeros(1, 3, 32, 32), [3, 1])
    with pytest.raises(ValueError, match="tap blocks"):
        vit(torch.zeros(1, 3, 32, 32), [6])


def fake_clip_state(gen) -> tuple[VisionTransformer, dict[str, torch.Tensor]]:
    """An OpenAI-layout CLIP state dict: our tower under visual.* plus a small text tower and metadata."""
    vit = VisionTransformer(CLIP_CFG).init_weights(gen).eval()
    state = {"visual." + k: v.clone() for k, v in vit.state_dict().items()}
    state.update({
        "positional_embedding": torch.randn(7, 16), "text_projection": torch.randn(16, 24),
        "logit_scale": torch.tensor(4.6), "token_embedding.weight": torch.randn(50, 16),
        "transformer.resblocks.0.attn.in_proj_weight": torch.randn(48, 16),
        "ln_final.weight": torch.ones(16), "ln_final.bias": torch.zeros(16),
        "input_resolution": torch.tensor(32), "context_length": torch.tensor(7), "vocab_size": torch.tensor(50),
    })
    return vit, state


def as_torchscript(state: dict[str, torch.Tensor], path: Path) -> None:
    """Save ``state`` the way OpenAI ships CLIP: as parameters/buffers of a TorchScript module."""
    class Holder(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Holder()
    for key, tensor in state.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if name not in module._modules:
                module.add_module(name, nn.Module())
            module = module._modules[name]
        if tensor.is_floating_point() and tensor.ndim > 0:
            module.register_parameter(leaf, nn.Parameter(tensor.half(), requires_grad=False))
        else:
            module.register_buffer(leaf, tensor)
    torch.jit.script(root).save(str(path))


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
@pytest.mark.parametrize("fmt", ["state_dict", "torchscript"])
def test_openai_clip_loads_and_reproduces_features(fmt, tmp_path, gen):
    vit, state = fake_clip_state(gen)
    path = tmp_path / "clip.pt"
    if fmt == "torchscript":
        as_torchscript(state, path)
        vit = vit.half().float()  # the archive stores fp16, as OpenAI's does
    else:
        torch.save(state, path)
    loaded = load_openai_clip(path)
    assert loaded.cfg == CLIP_CFG
    pixels = torch.randn(2, 3, 32, 32, generator=gen)
    with torch.no_grad():
        assert rel_err(loaded(pixels, [0, 1]), vit(pixels, [0, 1])) < 1e-6
        assert rel_err(loaded.embed_image(pixels), reference_embedding(vit, pixels)) < 1e-5


@pytest.mark.parametrize("change,key", [
    (lambda s: s.pop("visual.ln_post.weight"), "ln_post.weight"),
    (lambda s: s.pop("visual.conv1.weight"), "visual.conv1.weight"),
    (lambda s: s.__setitem__("visual.extra.weight", torch.zeros(3)), "extra.weight"),
    (lambda s: s.__setitem__("text_encoder.weight", torch.zeros(3)), "text_encoder.weight"),
    (lambda s: s.__setitem__("visual.ln_pre.bias", torch.zeros(5)), "ln_pre.bias"),
])
def test_bad_clip_checkpoint_names_the_key(change, key, tmp_path, gen):
    _, state = fake_clip_state(gen)
    change(state)
    torch.save(state, tmp_path / "clip.pt")
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_openai_clip(tmp_path / "clip.pt")


def test_unreadable_clip_file_names_it(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"junk" * 10)
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_openai_clip(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="missing.pt"):
        load_openai_clip(tmp_path / "missing.pt")


def test_convert_cli_round_trip(tmp_path, gen):
    vit, state = fake_clip_state(gen)
    torch.save(state, tmp_path / "clip.pt")
    script = Path(__file__).resolve().parents[2] / "weights" / "convert_clip.py"
    spec = importlib.util.spec_from_file_location("convert_clip", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main([str(tmp_path / "clip.pt"), str(tmp_path / "out"), "--dtype", "float32"])
    loaded = load_vision(tmp_path / "out")
    assert loaded.cfg == CLIP_CFG
    for k, v in vit.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_preprocess_matches_imagenet_normalisation(tmp_path):
    # A constant-colour image is unchanged by any resize, so the expected values are exact.
    Image.new("RGB", (40, 20), (255, 128, 0)).save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png", 16)
    expected = (np.array([255, 128, 0]) / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert x.shape == (3, 16, 16)
    assert np.allclose(x[:, 7, 3].numpy(), expected, atol=1e-5)
    Image.new("L", (8, 8), 51).save(tmp_path / "g.png")  # greyscale becomes three equal channels
    g = load_image(tmp_path / "g.png", 8)
    assert np.allclose(g[:, 0, 0].numpy() * [0.229, 0.224, 0.225] + [0.485, 0.456, 0.406], 0.2, atol=1e-5)


def test_unreadable_image_names_the_file(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(ImageError, match="bad.jpg"):
        load_image(tmp_path / "bad.jpg", 16)
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:60])
    with pytest.raises(ImageError, match="cut.png"):
        load_image(tmp_path / "cut.png", 16)
