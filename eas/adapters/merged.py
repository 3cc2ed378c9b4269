"""The layers of a merged EAS model (eas_method.md §2): what remains after the adapters are folded.

static:  the floor's layers, weights changed, plus a shift on the norm output (PIA.fold_static):
         a kept layer's attention norm adds a constant (ShiftedRMSNorm); a layer whose attention
         was skipped is a plain FFN layer whose norm adds a per-example shift (PooledShift: PIA-S's
         pooled term), computed at prefill and carried in the state. A decode step runs exactly
         the floor's operations, the norms' multiply becoming a multiply-add.
dynamic: exact per-example routing at any batch size: the weights stay, plus a routed rank-2r
         correction (RoutedDelta) with the up-projections pre-multiplied by W.
A skipped FFN or whole layer (the `ffn`/`layer` units) has no linear neighbour to fold into: its
PIA-S Δ stays (ResidualAdapterBlock), on the gain-free normalised input, routes fixed in `static`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from eas.adapters.pia import PIA, PIAState, RoutedDown, masked_mean
from eas.model.config import LlamaConfig
from eas.model.llama import Block, Context, RMSNorm, project, rms_normalize, stacked_bias
from eas.model.state import per_example
from eas.model.vit import patch_mask

MODES = ("static", "dynamic")


class ShiftedRMSNorm(RMSNorm):
    """γ ⊙ x / rms(x) + shift: a static merge's kept attention norm, PIA-A's constant folded in."""

    def __init__(self, dim: int, eps: float):
        super().__init__(dim, eps)
        self.shift = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, rms_normalize(x, self.eps), self.weight)


class PooledShift(nn.Module):
    """Static merge of PIA-S: its pooled term as a per-example shift of the norm output,
    shift + proj · ½ (W_A mean_prompt(x̂) + b_A) (½ folded into down_pool), once at prefill."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.down_pool = nn.Linear(dim, hidden)
        self.proj = nn.Parameter(torch.zeros(dim, hidden))
        self.shift = nn.Parameter(torch.zeros(dim))

    def forward(self, n: torch.Tensor, gain: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        """The prompt's shift [B, 1, C]; n: the gain-free norm of the layer input, gain: the norm's γ."""
        return (self.down_pool(masked_mean(n * gain, prompt_mask)) @ self.proj.T + self.shift)[:, None]


class RoutedDelta(RoutedDown):
    """Dynamic merge: Σ_j w_j (W U_j H + W c_j) for the stacked targets W, as one rank-2r product."""

    def __init__(self, dim: int, hidden: int, pooled: bool, out_features: int, temperature: float):
        super().__init__(dim, hidden, pooled, temperature)
        self.up = nn.Parameter(torch.zeros(out_features, 2 * hidden))
        self.route_bias = nn.Parameter(torch.zeros(out_features, 2))

    def forward(self, xn: torch.Tensor, state: PIAState) -> torch.Tensor:
        h = self.hidden(xn, state)
        w = state.route[:, None]
        return torch.cat((w[..., :1] * h, w[..., 1:] * h), -1) @ self.up.T + w @ self.route_bias.T

    def delta(self, xn: torch.Tensor, ctx: Context, name: str, linears) -> torch.Tensor:
        """The correction to the stacked outputs of `linears` (the targets), plus their biases."""
        d = self(xn, self.frozen_context(xn, ctx, name))
        bias = stacked_bias(linears)
        return d if bias is None else d + bias


def _attend(block, x: torch.Tensor, ctx: Context) -> torch.Tensor:
    """x + attention, with the routed q/k/v correction where the block has one."""
    xn = block.attention_norm(x)
    att = block.attention
    delta = getattr(block, "attn_delta", None)
    if delta is None:
        return x + att(xn, ctx, block.layer)
    lins = (att.wq, att.wk, att.wv)
    qkv = project(xn, lins, delta.delta(xn, ctx, f"layers.{block.layer}.attn_delta", lins))
    return x + att.attend(*qkv, ctx, block.layer)


class RoutedAttentionBlock(Block):
    """A kept layer, dynamic merge: q/k/v plus the routed rank-2r correction of PIA-A."""

    def __init__(self, cfg: LlamaConfig, layer: int, adapter_dim: int, temperature: float):
        super().__init__(cfg, layer)
        qkv = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
        self.attn_delta = RoutedDelta(cfg.dim, adapter_dim, False, qkv, temperature)

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        h = _attend(self, x, ctx)
        return h + self.feed_forward(self.ffn_norm(h))


class SkippedAttentionBlock(Block):
    """A layer whose attention PIA-S replaced, x + FFN(x̂'): static, x̂' = x̂ + the example's
    PooledShift; dynamic, x̂' = x̂ with W1/W3's outputs corrected by a RoutedDelta. x̂ =
    RMSNorm_att(x) (ffn_norm carries γ_att); W1, W3 absorb γ_ffn and PIA-S's token path."""

    def __init__(self, cfg: LlamaConfig, layer: int, mode: str, skip_dim: int, temperature: float):
        super().__init__(cfg, layer)
        self.mode = mode
        if mode == "static":
            self.ffn_shift = PooledShift(cfg.dim, skip_dim)
            self.shift_key = f"layers.{layer}.ffn_shift"
        else:
            self.ffn_delta = RoutedDelta(cfg.dim, skip_dim, True, 2 * cfg.hidden_dim, temperature)

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        ffn = self.feed_forward
        if self.mode == "static":
            norm = self.ffn_norm
            n = rms_normalize(x, norm.eps)
            if ctx.decoding:  # read straight from the state: a step is the floor's FFN layer, its mul an addcmul
                shift = ctx.state[self.shift_key]
            else:
                shift = per_example(ctx.state, self.shift_key, False, lambda: self.ffn_shift(n, norm.weight,
                                                                                                ctx.prompt_mask))
            return x + ffn(torch.addcmul(shift, n, norm.weight))
        xn, lins = self.ffn_norm(x), (ffn.w1, ffn.w3)
        gate, up = project(xn, lins, self.ffn_delta.delta(xn, ctx, f"layers.{self.layer}.ffn_delta", lins))
        return x + ffn.w2(F.silu(gate) * up)


class ResidualAdapterBlock(Block):
    """A layer whose FFN (or whole layer) PIA-S replaced: h + Δ(RMSNorm(h)) without a gain, the
    gain folded into Δ's input side; h = the attention's output, or x where the layer is gone."""

    def __init__(self, cfg: LlamaConfig, layer: int, mode: str, info: dict):
        super().__init__(cfg, layer)
        if self.attention is not None and mode == "dynamic":
            qkv = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
            self.attn_delta = RoutedDelta(cfg.dim, info["adapter_dim"], False, qkv, info["temperature"])
        self.eps = cfg.norm_eps
        self.residual_adapter = PIA(cfg.dim, info["skip_dim"], True, info.get("groups", 2), info["temperature"],
                                    info.get("scale", 1.0), dropout=0.0)
        if mode == "static":
            self.residual_adapter.fixed_route = torch.zeros(2)  # shape only; the loaded state fills it

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        h = x if self.attention is None else _attend(self, x, ctx)
        xn = rms_normalize(h, self.eps)
        pia = self.residual_adapter
        return h + pia(xn, pia.frozen_context(xn, ctx, f"layers.{self.layer}.residual_adapter"))


def merged_block(cfg: LlamaConfig, layer: int, info: dict) -> nn.Module:
    """The layer `layer` of a merged model of config `cfg` (merged_config) and merge `info`."""
    mode = info["mode"]
    if mode not in MODES:
        raise ValueError(f"merge mode must be one of {MODES}, got {mode!r}")
    if layer in cfg.no_ffn:
        block = ResidualAdapterBlock(cfg, layer, mode, info)
        return _shifted(block, cfg) if block.attention is not None and mode == "static" else block
    if layer in cfg.no_attention:
        return SkippedAttentionBlock(cfg, layer, mode, info["skip_dim"], info["temperature"])
    if mode == "dynamic":
        return RoutedAttentionBlock(cfg, layer, info["adapter_dim"], info["temperature"])
    return _shifted(Block(cfg, layer), cfg)


def _shifted(block: Block, cfg: LlamaConfig) -> Block:
    """A static merge's kept attention reads its norm plus PIA-A's constant shift."""
    block.attention_norm = ShiftedRMSNorm(cfg.dim, cfg.norm_eps)
    return block


class RoutedViTBlock(nn.Module):
    """A CLIP ViT block, dynamic merge: the packed q/k/v plus PIA-A's routed correction, per image."""

    def __init__(self, block, width: int, adapter_dim: int, temperature: float):
        super().__init__()
        self.ln_1, self.attn, self.ln_2, self.mlp = block.ln_1, block.attn, block.ln_2, block.mlp
        self.attn_delta = RoutedDelta(width, adapter_dim, False, 3 * width, temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xn = self.ln_1(x)
        patches = patch_mask(xn)
        delta = self.attn_delta(xn, self.attn_delta.context(xn, patches, patches))
        x = x + self.attn.attend(self.attn.qkv(xn) + delta)
        return x + self.mlp(self.ln_2(x))
