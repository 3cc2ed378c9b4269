"""LaVIN or LLaVA models from separate LLaMA and CLIP checkpoints (what real users hold), and the
LLaVA form of a LaVIN base (the tiny one).

The decoder and the ViT come from their loaders; the projector (and LaVIN's modality embedding)
is new (both recipes train it with the adapters), initialised from a fixed seed.
"""
from __future__ import annotations

from pathlib import Path

import torch

from eas.model.config import LavinConfig, LlavaConfig
from eas.model.lavin import Lavin
from eas.model.llava import Llava, Projector
from eas.io.load_clip import load_vision
from eas.io.load_llama import load_llama


def assemble_lavin(llama_dir: str | Path, clip: str | Path, dtype: torch.dtype = torch.float32,
                   device: str | torch.device = "cpu", seed: int = 0) -> tuple[Lavin, Path | None]:
    """-> (Lavin, tokenizer.model found next to the LLaMA weights or None)."""
    llama, tokenizer = load_llama(llama_dir, dtype, device)
    visual = load_vision(clip, dtype, device)
    cfg = LavinConfig(llama=llama.cfg, vision=visual.cfg)
    with torch.device("meta"):
        model = Lavin(cfg)
    model.llama, model.visual = llama, visual  # only the LaVIN-specific parts are new
    with torch.device(device):
        model.adapter_proj = type(model.adapter_proj)(cfg.vision.width, cfg.projector_hidden, cfg.llama.dim)
        model.adapter_modality_embedding = torch.nn.Embedding(2, cfg.llama.dim)
    g = torch.Generator(device=device).manual_seed(seed)
    model.adapter_proj.reset_parameters(g)
    torch.nn.init.normal_(model.adapter_modality_embedding.weight, generator=g)
    return model, tokenizer


def llava_form(llama, vision, device: str | torch.device = "cpu", seed: int = 0) -> Llava:
    """A Llava around a loaded LLaMA and ViT (their weights shared, not copied), with a fresh
    mlp2x_gelu projector drawn from `seed`."""
    with torch.device("meta"):
        model = Llava(LlavaConfig(llama=llama.cfg, vision=vision.cfg))
    model.llama, model.vision_tower = llama, vision
    with torch.device(device):
        model.adapter_projector = Projector(vision.cfg.width, llama.cfg.dim)
    model.adapter_projector.reset_parameters(torch.Generator(device=device).manual_seed(seed))
    return model


def assemble_llava(llama_dir: str | Path, clip: str | Path, dtype: torch.dtype = torch.float32,
                   device: str | torch.device = "cpu", seed: int = 0) -> tuple[Llava, Path | None]:
    """-> (Llava with a new projector, tokenizer.model found next to the LLaMA weights or None)."""
    llama, tokenizer = load_llama(llama_dir, dtype, device)
    return llava_form(llama, load_vision(clip, dtype, device), device, seed), tokenizer
