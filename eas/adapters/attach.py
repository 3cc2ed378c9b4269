"""Turn a base model into an EAS super-network, and switch its skip set at run time.

Every LLaMA layer gets PIA-A and PIA-S (as in the authors' code), so the search can flip any layer
between kept and skipped; every ViT block gets PIA-A. The final model, with the skipped units
physically absent, comes from eas.adapters.merge.merge.
"""
from __future__ import annotations

import torch
from torch import nn

from eas.adapters.blocks import UNITS, AdaptedViTBlock, EASBlock, EASConfig
from eas.adapters.pia import PIA, SeededDropout
from eas.model.llama import Llama

__all__ = ["UNITS", "EASConfig", "add_adapters", "set_skipped", "llama_of", "eas_blocks", "mark_trainable",
           "freeze_routers", "set_dropout_generator"]


def _pia(dim: int, hidden: int, pooled: bool, cfg: EASConfig, generator, like: torch.Tensor) -> PIA:
    pia = PIA(dim, hidden, pooled, cfg.groups, cfg.temperature, cfg.scale, cfg.dropout, generator)
    return pia.to(like.device, like.dtype)


def llama_of(model: nn.Module) -> Llama:
    """The decoder of a Llama or a Lavin."""
    return getattr(model, "llama", model)


def add_adapters(model: nn.Module, cfg: EASConfig, generator: torch.Generator | None = None) -> nn.Module:
    """Replace every ViT block (of a Lavin) and every LLaMA layer by its adapted form, in place.

    Adapters start as the identity map; their random parts are drawn from `generator` (torch's
    global generator when None), ViT blocks first, then per layer PIA-A and PIA-S."""
    llama = llama_of(model)
    if llama.cfg.no_attention or llama.cfg.no_ffn:
        raise ValueError(f"adapters go on a full base model; this one lacks the attention of layers "
                         f"{llama.cfg.no_attention} and the FFN of layers {llama.cfg.no_ffn}")
    visual = getattr(model, "visual", None)
    if visual is not None:
        blocks = visual.transformer.resblocks
        for i, blk in enumerate(blocks):
            blocks[i] = AdaptedViTBlock(blk, _pia(visual.cfg.width, cfg.adapter_dim, False, cfg, generator,
                                                  visual.conv1.weight))
    p = llama.tok_embeddings.weight
    for i, block in enumerate(llama.layers):
        pia_a = _pia(llama.cfg.dim, cfg.adapter_dim, False, cfg, generator, p)
        pia_s = _pia(llama.cfg.dim, cfg.skip_dim, True, cfg, generator, p)
        llama.layers[i] = EASBlock(block, pia_a, pia_s, cfg)
    model.eas = llama.eas = cfg  # one object, shared with every EASBlock
    set_skipped(model, cfg.skip_layers)
    return model


def eas_blocks(model: nn.Module) -> list[EASBlock]:
    blocks = [b for b in llama_of(model).layers if isinstance(b, EASBlock)]
    if not blocks:
        raise ValueError("the model has no EAS adapters: call eas.adapters.attach.add_adapters first")
    return blocks


def set_skipped(model: nn.Module, layers) -> None:
    """Which layers' unit (EASConfig.unit) PIA-S replaces; the search calls this every step."""
    eas_blocks(model)
    layers = tuple(sorted(set(int(i) for i in layers)))
    n = llama_of(model).cfg.n_layers
    bad = [i for i in layers if not 0 <= i < n]
    if bad:
        raise ValueError(f"skip layers {bad} outside 0..{n - 1}")
    llama_of(model).eas.skip_layers = layers


def mark_trainable(model: nn.Module) -> nn.Module:
    """Freeze everything except parameters whose name contains 'adapter' (LaVIN's convention)."""
    for name, p in model.named_parameters():
        p.requires_grad_("adapter" in name)
    return model


@torch.no_grad()
def freeze_routers(model: nn.Module) -> nn.Module:
    """Zero and freeze every adapter's router, so it routes (1/2, 1/2) for every input.

    For a model that will be deployed `static`-merged: the static merge replaces routing by its
    mean, which is exact only if routing never varied, so a static deployment tunes with the
    constant route it will be merged with (docs/RESULTS.md measures what routing costs)."""
    for pia in model.modules():
        if isinstance(pia, PIA):
            pia.router.weight.zero_()
            pia.router.bias.zero_()
            pia.router.requires_grad_(False)
    return model


def set_dropout_generator(model: nn.Module, generator: torch.Generator | None) -> None:
    """Make every adapter's dropout draw from `generator` (on the model's device); None: torch's global one."""
    for m in model.modules():
        if isinstance(m, SeededDropout):
            m.generator = generator
