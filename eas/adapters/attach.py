"""Turn a base LLaMA into an EAS super-network: PIA-A and PIA-S in every layer, skip set switchable.

Both adapters exist in every layer (as in the authors' code), so the search can flip any layer
between kept and skipped at run time; the final model is built with the skipped units physically
absent by eas/merge.py.

What a skipped unit is (``EASConfig.unit``; the paper's Table 5 ablation and DAS):
  attention: PIA-S replaces the MHA and feeds the FFN, x + FFN(γ_ffn ⊙ PIA-S(RMSNorm_att(x)));
  ffn:       the FFN is replaced by PIA-S's Δ on its input norm, h + Δ(RMSNorm_ffn(h));
  layer:     the whole layer is replaced by PIA-S's Δ, x + Δ(RMSNorm_att(x)), as DAS does.
Only `attention` merges into the remaining weights; a skipped FFN or layer has no linear
neighbour to fold into, so its rank-r Δ stays at inference (the latency EAS avoids).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from eas.model.llama import Llama
from eas.adapters.pia import PIA, SeededDropout

UNITS = ("attention", "ffn", "layer")


@dataclass
class EASConfig:
    adapter_dim: int = 8     # r_a, PIA-A hidden width (LaVIN-7B: 8; LLaVA: 128)
    skip_dim: int = 32       # r_s, PIA-S hidden width (LaVIN-7B: 32; LLaVA: 256)
    groups: int = 2
    temperature: float = 10.0
    scale: float = 1.0
    dropout: float = 0.1
    skip_layers: tuple[int, ...] = ()
    unit: str = "attention"

    def __post_init__(self):
        self.skip_layers = tuple(sorted(set(int(i) for i in self.skip_layers)))
        if self.unit not in UNITS:
            raise ValueError(f"unknown skip unit {self.unit!r}; choose one of {UNITS}")


def _pia(dim: int, hidden: int, pooled: bool, cfg: EASConfig, generator=None) -> PIA:
    return PIA(dim, hidden, pooled, cfg.groups, cfg.temperature, cfg.scale, cfg.dropout, generator)


def add_adapters(model: nn.Module, cfg: EASConfig, generator: torch.Generator | None = None) -> nn.Module:
    """Attach PIA-A and PIA-S to every LLaMA layer, and PIA-A to every ViT block of a Lavin model
    (in place); adapters start as the identity map, their random parts drawn from `generator`
    (torch's global generator when None)."""
    llama = getattr(model, "llama", model)
    visual = getattr(model, "visual", None)
    if visual is not None:
        p = visual.conv1.weight
        for blk in visual.transformer.resblocks:
            blk.adapter_attn = _pia(visual.cfg.width, cfg.adapter_dim, False, cfg, generator).to(p.device, p.dtype)
    add_llama_adapters(llama, cfg, generator)
    model.eas = cfg
    return model


def add_llama_adapters(llama: Llama, cfg: EASConfig, generator: torch.Generator | None = None) -> Llama:
    if llama.cfg.skip_layers:
        raise ValueError(f"adapters go on a full base model; this one has no attention in layers "
                         f"{llama.cfg.skip_layers}")
    p = llama.tok_embeddings.weight
    for block in llama.layers:
        block.adapter_attn = _pia(llama.cfg.dim, cfg.adapter_dim, False, cfg, generator).to(p.device, p.dtype)
        block.adapter_skip = _pia(llama.cfg.dim, cfg.skip_dim, True, cfg, generator).to(p.device, p.dtype)
    llama.eas = cfg
    set_skipped(llama, cfg.skip_layers)
    return llama


def set_skipped(llama: Llama, layers) -> None:
    """Switch which layers' unit (llama.eas.unit) PIA-S replaces (the search calls this every step)."""
    layers = set(int(i) for i in layers)
    bad = sorted(i for i in layers if not 0 <= i < llama.cfg.n_layers)
    if bad:
        raise ValueError(f"skip layers {bad} outside 0..{llama.cfg.n_layers - 1}")
    unit = llama.eas.unit
    for block in llama.layers:
        block.skipped = unit != "ffn" and block.layer in layers
        block.ffn_skipped = unit != "attention" and block.layer in layers
    llama.eas.skip_layers = tuple(sorted(layers))


def set_dropout_generator(model: nn.Module, generator: torch.Generator | None) -> None:
    """Make every adapter's dropout draw from `generator` (on the model's device); None: torch's global one."""
    for m in model.modules():
        if isinstance(m, SeededDropout):
            m.generator = generator


def mark_trainable(model: nn.Module) -> nn.Module:
    """Freeze everything except parameters whose name contains 'adapter' (LaVIN's convention)."""
    for name, p in model.named_parameters():
        p.requires_grad_("adapter" in name)
    return model


@torch.no_grad()
def freeze_routers(model: nn.Module) -> nn.Module:
    """Zero and freeze every adapter's router, so it routes (1/2, 1/2) for every input.

    For a model that will be deployed `static`-merged: the static merge replaces routing by its
    mean, which is exact only if routing never varied. A trained router does vary (on synthetic AID
    the per-example weight spread reached 0.3 and the mean-route model lost 6-9 points), so a
    static deployment tunes with the constant route it will be merged with."""
    for pia in model.modules():
        if isinstance(pia, PIA):
            pia.router.weight.zero_()
            pia.router.bias.zero_()
            pia.router.requires_grad_(False)
    return model
