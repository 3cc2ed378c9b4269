"""A LaVIN model assembled from a Meta LLaMA folder and an OpenAI CLIP file (the real-user path)."""
from __future__ import annotations

import torch

from eas.io.assemble import assemble_lavin
from eas.model.config import LlamaConfig, VisionConfig
from eas.model.llama import Llama
from eas.model.vit import VisionTransformer
from helpers import openai_clip_state, write_meta


def test_assembled_model_carries_both_checkpoints(tmp_path, gen):
    llama = Llama(LlamaConfig.named("test")).init_weights(gen).eval()
    write_meta(llama, tmp_path / "7B")
    # CLIP's heads are 64 wide, so the loader infers heads = width / 64: use a 64-wide tower.
    cfg = VisionConfig(image_size=32, patch_size=8, width=64, layers=6, heads=1, output_dim=32)
    vit = VisionTransformer(cfg).init_weights(gen).eval()
    torch.save(openai_clip_state(vit), tmp_path / "clip.pt")
    model, tokenizer = assemble_lavin(tmp_path / "7B", tmp_path / "clip.pt", seed=3)
    assert tokenizer == tmp_path / "tokenizer.model"
    assert model.cfg.tap_blocks == (0, 1, 2, 3, 4, 5)
    tokens = torch.randint(0, llama.cfg.vocab_size, (2, 9), generator=gen)
    pixels = torch.randn(2, 3, 32, 32, generator=gen)
    with torch.no_grad():
        assert torch.allclose(model.llama(tokens), llama(tokens), atol=1e-5)
        assert torch.allclose(model.visual(pixels, [5]), vit(pixels, [5]))
    # The LaVIN-only parts are new, materialised, and a function of the seed alone.
    again, _ = assemble_lavin(tmp_path / "7B", tmp_path / "clip.pt", seed=3)
    for name in ("adapter_proj.conv_A.weight", "adapter_modality_embedding.weight"):
        a, b = model.state_dict()[name], again.state_dict()[name]
        assert a.device.type == "cpu" and torch.equal(a, b) and a.abs().sum() > 0
