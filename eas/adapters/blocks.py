"""The EAS super-network's layers: a base layer's modules plus its two adapters (eas_method.md §1).

Put in by eas.adapters.attach.add_adapters, which replaces every LLaMA Block and ViT block. Which
layers PIA-S replaces, and what it replaces (``EASConfig.unit``), is read from the one EASConfig the
blocks share, so a skip set lives in exactly one place:

  attention: PIA-S replaces the MHA and feeds the FFN, x + FFN(γ_ffn ⊙ PIA-S(RMSNorm_att(x)));
  ffn:       the FFN is replaced by PIA-S's Δ on its input norm, h + Δ(RMSNorm_ffn(h));
  layer:     the whole layer is replaced by PIA-S's Δ, x + Δ(RMSNorm_att(x)), as DAS does.
Kept layers run PIA-A between the attention norm and the q/k/v projections.

Each block also knows how its adapters fold into the weights that read them (``merged_state``);
eas/adapters/merged.py defines the layers that state loads into.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from eas.adapters.pia import PIA, FoldBound
from eas.model.llama import Block, Context
from eas.model.vit import patch_mask

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


class EASBlock(nn.Module):
    def __init__(self, block: Block, adapter_attn: PIA, adapter_skip: PIA, eas: EASConfig):
        super().__init__()
        if block.attention is None or block.feed_forward is None:
            raise ValueError(f"adapters go on a full base layer; layer {block.layer} lacks a unit")
        self.layer = block.layer
        self.attention_norm, self.attention = block.attention_norm, block.attention
        self.ffn_norm, self.feed_forward = block.ffn_norm, block.feed_forward
        self.adapter_attn, self.adapter_skip = adapter_attn, adapter_skip
        self.eas = eas

    @property
    def skipped(self) -> bool:
        return self.layer in self.eas.skip_layers

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        unit = self.eas.unit
        if not self.skipped:
            h = self._attend(x, ctx)
            return h + self.feed_forward(self.ffn_norm(h))
        if unit == "attention":
            xn = self.attention_norm(x)
            z = xn + self._adapter(self.adapter_skip, "adapter_skip", xn, ctx)
            return x + self.feed_forward(self.ffn_norm.weight * z)
        h = x if unit == "layer" else self._attend(x, ctx)
        xn = (self.attention_norm if unit == "layer" else self.ffn_norm)(h)
        return h + self._adapter(self.adapter_skip, "adapter_skip", xn, ctx)

    def _adapter(self, pia: PIA, name: str, xn: torch.Tensor, ctx: Context) -> torch.Tensor:
        return pia(xn, pia.frozen_context(xn, ctx, f"layers.{self.layer}.{name}"))

    def _attend(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        xn = self.attention_norm(x)
        xn = xn + self._adapter(self.adapter_attn, "adapter_attn", xn, ctx)
        return x + self.attention(xn, ctx, self.layer)

    def active_adapters(self) -> list[PIA]:
        """The adapters this layer runs under the current skip set (the others are idle)."""
        if not self.skipped:
            return [self.adapter_attn]
        if self.eas.unit == "ffn":  # the attention stays, with its PIA-A
            return [self.adapter_attn, self.adapter_skip]
        return [self.adapter_skip]

    @torch.no_grad()
    def merged_state(self, mode: str, bound: FoldBound) -> dict[str, torch.Tensor]:
        """fp32 tensors of this layer's merged form (eas/adapters/merged.py), keyed as in it; `bound`
        admits (and records) the gain of each static fold (PIA.fold_static)."""
        if not self.skipped:
            return {**self._attention_state(mode, bound), **_ffn_state(self)}
        if self.eas.unit == "attention":
            return self._skipped_attention_state(mode, bound)
        state = {} if self.eas.unit == "layer" else self._attention_state(mode, bound)
        norm = self.attention_norm if self.eas.unit == "layer" else self.ffn_norm
        return {**state, **_residual_state(self.adapter_skip, norm.weight, mode)}

    def _attention_state(self, mode: str, bound: FoldBound) -> dict[str, torch.Tensor]:
        att, pia = self.attention, self.adapter_attn
        lins = {"wq": att.wq, "wk": att.wk, "wv": att.wv}
        weights = [lin.weight.float() for lin in lins.values()]
        state = {"attention_norm.weight": self.attention_norm.weight.float(),
                 "attention.wo.weight": att.wo.weight.float(),
                 **{f"attention.{n}.bias": lin.bias.float() for n, lin in lins.items() if lin.bias is not None}}
        if mode == "static":
            where = f"layer {self.layer}'s PIA-A"
            weights, _, state["attention_norm.shift"] = pia.fold_static(weights, False, where, bound)
        else:
            state.update({"attn_delta." + k: v for k, v in pia.fold_routed(weights).items()})
        return {**state, **{f"attention.{n}.weight": W for n, W in zip(lins, weights)}}

    def _skipped_attention_state(self, mode: str, bound: FoldBound) -> dict[str, torch.Tensor]:
        """x̂ = RMSNorm_att(x) feeds W1/W3 through γ_ffn: W Γ_ffn absorbs PIA-S; the merged layer's
        norm carries γ_att, so it has exactly the shape of a layer whose attention was deleted."""
        pia, ffn = self.adapter_skip, self.feed_forward
        g = self.ffn_norm.weight.float()
        w1, w3 = ffn.w1.weight.float() * g, ffn.w3.weight.float() * g
        state = {"ffn_norm.weight": self.attention_norm.weight.float(), "feed_forward.w2.weight": ffn.w2.weight.float()}
        if mode == "static":
            (w1, w3), proj, shift = pia.fold_static([w1, w3], True, f"layer {self.layer}'s PIA-S", bound)
            state.update({"ffn_shift.down_pool.weight": pia.pool_mix * pia.down_pool.weight.float(),
                          "ffn_shift.down_pool.bias": pia.pool_mix * pia.down_pool.bias.float(),
                          "ffn_shift.proj": proj, "ffn_shift.shift": shift})
        else:
            state.update({"ffn_delta." + k: v for k, v in pia.fold_routed([w1, w3]).items()})
        return {**state, "feed_forward.w1.weight": w1, "feed_forward.w3.weight": w3}


def _ffn_state(block) -> dict[str, torch.Tensor]:
    ffn = block.feed_forward
    return {"ffn_norm.weight": block.ffn_norm.weight.float(),
            **{f"feed_forward.{n}.weight": getattr(ffn, n).weight.float() for n in ("w1", "w2", "w3")}}


def _residual_state(pia: PIA, gain: torch.Tensor, mode: str) -> dict[str, torch.Tensor]:
    """PIA-S standing in for a skipped FFN/layer, reading the gain-free norm: Δ reads x̂ = γ ⊙ n
    only through linear maps (down, pooled down, router), so γ folds into their columns."""
    if mode == "static" and pia.fixed_route is None:
        raise ValueError("a static fold needs router constants: run eas.adapters.calibrate.calibrate_routes first")
    state = {k: v.float() for k, v in pia.state_dict().items()}
    for name in ("down", "down_pool", "router"):
        state[f"{name}.weight"] = state[f"{name}.weight"] * gain.float()
    return {"residual_adapter." + k: v for k, v in state.items()}


class AdaptedViTBlock(nn.Module):
    """A CLIP ViT block with PIA-A between ln_1 and the attention, routed per image on the mean
    of its patch tokens (CLS excluded)."""

    def __init__(self, block, adapter_attn: PIA):
        super().__init__()
        self.ln_1, self.attn, self.ln_2, self.mlp = block.ln_1, block.attn, block.ln_2, block.mlp
        self.adapter_attn = adapter_attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xn = self.ln_1(x)
        patches = patch_mask(xn)
        xn = xn + self.adapter_attn(xn, self.adapter_attn.context(xn, patches, patches))
        x = x + self.attn(xn)
        return x + self.mlp(self.ln_2(x))

    @torch.no_grad()
    def merged_state(self, mode: str, bound: FoldBound) -> dict[str, torch.Tensor]:
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("adapter_attn.")}
        W = self.attn.in_proj_weight.float()
        if mode == "static":  # the shift joins ln_1's bias: the merged block is a plain CLIP block
            fold = self.adapter_attn.fold_static([W], False, "a ViT block's PIA-A", bound)
            (state["attn.in_proj_weight"],), _, shift = fold
            state["ln_1.bias"] = self.ln_1.bias.float() + shift
        else:
            state.update({"attn_delta." + k: v for k, v in self.adapter_attn.fold_routed([W]).items()})
        return state
