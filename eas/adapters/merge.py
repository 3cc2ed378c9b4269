"""Exact re-parameterization of PIA adapters into the remaining weights (eas_method.md §2).

With routing frozen, a PIA is the token-wise affine map x̂ -> R x̂ + b, R = I + M_u M_d (rank r), so
it folds into the linear layers that read its output: Wq/Wk/Wv of a kept layer (PIA-A) and
W1/W3 of a skipped layer's FFN (PIA-S, after γ_ffn). Every update is built as (W M_u) M_d, a
rank-r product: no C x C matrix is ever formed. Biases use the *original* W (the authors' code
uses the already-merged one, which is wrong).

static:  routers replaced by task constants (``fixed_route``); all matrices merge once. PIA-S's
         pooled term stays per example: a bias for [W1 | W3], computed at prefill (PooledBias)
         and frozen in the cache like the KV entries.
dynamic: exact per-example routing at any batch size: W stays, plus a routed rank-2r
         correction with the up-projections pre-multiplied by W (RoutedDelta).
A merged skipped layer reads x̂ = RMSNorm_att(x) through its ffn_norm (whose gain becomes γ_att), so
it has exactly the structure of a block whose attention was deleted.

A skipped FFN or whole layer (the `ffn`/`layer` search units) has no linear neighbour to fold
into: its PIA-S Δ stays as a ``residual_adapter`` on the gain-free normalised input (the gain
folded into its down projections and router), with fixed routes in `static` mode.
"""
from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from eas.io.checkpoint import load_state_strict
from eas.model.config import LlamaConfig
from eas.model.llama import Llama
from eas.adapters.pia import PIA, PIAState, RoutedDown, masked_mean

MODES = ("static", "dynamic")


class PooledBias(nn.Module):
    """Static merge of PIA-S: per-example bias of [W1 | W3] = proj · (W_A mean_prompt(x̂) + b_A)."""

    def __init__(self, dim: int, hidden: int, out_features: int):
        super().__init__()
        self.down_pool = nn.Linear(dim, hidden)
        self.proj = nn.Parameter(torch.zeros(out_features, hidden))

    def context(self, xn, pool_mask, route_mask) -> torch.Tensor:
        return self.down_pool(masked_mean(xn, pool_mask)) @ self.proj.T

    def forward(self, xn: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return bias[:, None]


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


def _up_parts(pia: PIA):
    """Dense block-diagonal up matrices [C, r] and biases, scale folded in."""
    s = pia.scale
    return s * pia.up_b.dense(), s * pia.up_d.dense(), s * pia.up_b.bias, s * pia.up_d.bias


def _targets_static(pia: PIA, weights: list[torch.Tensor], half: bool):
    """(W', b_const, W M_u) for each W reading PIA(x̂) with routing fixed to pia.fixed_route."""
    if pia.fixed_route is None:
        raise ValueError("static merge needs router constants: run eas.merge.calibrate_routes first")
    w = pia.fixed_route.float()
    ub, ud, cb, cd = _up_parts(pia)
    m_u, beta_u = w[0] * ub + w[1] * ud, w[0] * cb + w[1] * cd
    mix = pia.pool_mix if half else 1.0
    m_d, beta_d = mix * pia.down.weight.float(), mix * pia.down.bias.float()
    out = []
    for W in weights:
        wm = W @ m_u
        out.append((W + wm @ m_d, W @ (m_u @ beta_d + beta_u), wm))
    return out


def _routed_delta(pia: PIA, weights: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    ub, ud, cb, cd = _up_parts(pia)
    state = {k: v.float() for k, v in pia.state_dict().items() if k.startswith(("down", "router"))}
    state["up"] = torch.cat([torch.cat((W @ ub, W @ ud), 1) for W in weights])
    state["route_bias"] = torch.cat([torch.stack((W @ cb, W @ cd), 1) for W in weights])
    return state


def merged_config(cfg: LlamaConfig, skip_layers, skip_ffn_layers=()) -> LlamaConfig:
    return dataclasses.replace(cfg, skip_layers=tuple(skip_layers), skip_ffn_layers=tuple(skip_ffn_layers),
                               qkv_bias=True, ffn_bias=True)


def attach_extras(llama: Llama, mode: str, adapter_dim: int, skip_dim: int, temperature: float,
                  groups: int = 2, scale: float = 1.0) -> Llama:
    """Give a plain merged-shape model the per-example modules its merge mode needs."""
    if mode not in MODES:
        raise ValueError(f"merge mode must be one of {MODES}, got {mode!r}")
    cfg, p = llama.cfg, llama.tok_embeddings.weight
    qkv = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
    for block in llama.layers:
        if block.ffn_skipped:  # a skipped FFN or layer keeps PIA-S's Δ: nothing linear to fold it into
            block.residual_adapter = PIA(cfg.dim, skip_dim, True, groups, temperature, scale, dropout=0.0)
            if mode == "static":
                block.residual_adapter.fixed_route = torch.zeros(2)  # shape only; merge/load fill it
        elif block.skipped:
            block.ffn_delta = (PooledBias(cfg.dim, skip_dim, 2 * cfg.hidden_dim) if mode == "static" else
                               RoutedDelta(cfg.dim, skip_dim, True, 2 * cfg.hidden_dim, temperature))
        if not block.skipped and mode == "dynamic":
            block.attn_delta = RoutedDelta(cfg.dim, adapter_dim, False, qkv, temperature)
    return llama.to(device=p.device, dtype=p.dtype)


def _merge_state(model: Llama, mode: str) -> dict[str, torch.Tensor]:
    """Merged tensors, computed in fp32 one layer at a time and stored in the model's dtype."""
    dtype = model.tok_embeddings.weight.dtype
    state = {name: t for name, t in model.state_dict().items() if not name.startswith("layers.")}
    for block in model.layers:
        layer_state = _merge_layer(block, mode)
        state.update({k: v.to(dtype) for k, v in layer_state.items()})
    return state


def _merge_layer(block, mode: str) -> dict[str, torch.Tensor]:
    if block.ffn_skipped:
        state = {} if block.skipped else _merge_attention(block, mode)
        norm = block.attention_norm if block.skipped else block.ffn_norm
        state.update(_residual_state(block.adapter_skip, norm.weight, mode))
    elif block.skipped:
        state = _merge_skipped(block, mode)
    else:
        state = {**_merge_attention(block, mode), **_ffn_state(block)}
    return {f"layers.{block.layer}.{k}": v for k, v in state.items()}


def _ffn_biases(ffn) -> dict[str, torch.Tensor]:
    """W1/W3 biases of a skipped layer's FFN, to merge PIA-S into; a base FFN has none (zeros)."""
    return {f"feed_forward.{n}.bias": getattr(ffn, n).bias.float() if getattr(ffn, n).bias is not None
            else ffn.w2.weight.new_zeros(getattr(ffn, n).out_features, dtype=torch.float32) for n in ("w1", "w3")}


def _ffn_state(block) -> dict[str, torch.Tensor]:
    ffn = block.feed_forward
    return {"ffn_norm.weight": block.ffn_norm.weight.float(),
            **{f"feed_forward.{n}.weight": getattr(ffn, n).weight.float() for n in ("w1", "w2", "w3")}}


def _residual_state(pia: PIA, gain: torch.Tensor, mode: str) -> dict[str, torch.Tensor]:
    """PIA-S standing in for a skipped FFN/layer, reading the gain-free norm: Δ reads x̂ = γ ⊙ n
    only through linear maps (down, pooled down, router), so γ folds into their columns."""
    if mode == "static" and pia.fixed_route is None:
        raise ValueError("static merge needs router constants: run eas.merge.calibrate_routes first")
    state = {k: v.float() for k, v in pia.state_dict().items()}
    for name in ("down", "down_pool", "router"):
        state[f"{name}.weight"] = state[f"{name}.weight"] * gain.float()
    return {"residual_adapter." + k: v for k, v in state.items()}


def _merge_skipped(block, mode: str) -> dict[str, torch.Tensor]:
    pia, ffn = block.adapter_skip, block.feed_forward
    g = block.ffn_norm.weight.float()
    w1, w3 = ffn.w1.weight.float() * g, ffn.w3.weight.float() * g  # W Γ_ffn
    state = {"ffn_norm.weight": block.attention_norm.weight.float(),
             "feed_forward.w2.weight": ffn.w2.weight.float(), **_ffn_biases(ffn)}
    if mode == "static":
        (w1m, b1, p1), (w3m, b3, p3) = _targets_static(pia, [w1, w3], half=True)
        state["feed_forward.w1.bias"] += b1
        state["feed_forward.w3.bias"] += b3
        state.update({"feed_forward.w1.weight": w1m, "feed_forward.w3.weight": w3m,
                      "ffn_delta.down_pool.weight": pia.down_pool.weight.float(),
                      "ffn_delta.down_pool.bias": pia.down_pool.bias.float(),
                      "ffn_delta.proj": pia.pool_mix * torch.cat((p1, p3))})
    else:
        state.update({"feed_forward.w1.weight": w1, "feed_forward.w3.weight": w3})
        state.update({"ffn_delta." + k: v for k, v in _routed_delta(pia, [w1, w3]).items()})
    return state


def _merge_attention(block, mode: str) -> dict[str, torch.Tensor]:
    att, pia = block.attention, block.adapter_attn
    state = {"attention_norm.weight": block.attention_norm.weight.float(),
             "attention.wo.weight": att.wo.weight.float()}
    lins = {"wq": att.wq, "wk": att.wk, "wv": att.wv}
    weights = [lin.weight.float() for lin in lins.values()]
    biases = [lin.bias.float() if lin.bias is not None else lin.weight.new_zeros(lin.out_features, dtype=torch.float32)
              for lin in lins.values()]
    if mode == "static":
        merged = _targets_static(pia, weights, half=False)
        weights = [wm for wm, _, _ in merged]
        biases = [b0 + b for b0, (_, b, _) in zip(biases, merged)]
    else:
        state.update({"attn_delta." + k: v for k, v in _routed_delta(pia, weights).items()})
    for name, W, b in zip(lins, weights, biases):
        state[f"attention.{name}.weight"], state[f"attention.{name}.bias"] = W, b
    return state


def attach_vision_extras(visual, mode: str, adapter_dim: int, temperature: float):
    if mode == "dynamic":
        w, p = visual.cfg.width, visual.conv1.weight
        for blk in visual.transformer.resblocks:
            blk.attn_delta = RoutedDelta(w, adapter_dim, False, 3 * w, temperature).to(p.device, p.dtype)
    return visual


def _merge_vision_state(visual, mode: str) -> dict[str, torch.Tensor]:
    dtype = visual.conv1.weight.dtype
    state = {k: v for k, v in visual.state_dict().items() if ".adapter_" not in k}
    for i, blk in enumerate(visual.transformer.resblocks):
        pre, W = f"transformer.resblocks.{i}.attn.", blk.attn.in_proj_weight.float()
        if mode == "static":
            ((wm, b, _),) = _targets_static(blk.adapter_attn, [W], half=False)
            state[pre + "in_proj_weight"] = wm.to(dtype)
            state[pre + "in_proj_bias"] = (blk.attn.in_proj_bias.float() + b).to(dtype)
        else:
            delta = _routed_delta(blk.adapter_attn, [W])
            state.update({f"transformer.resblocks.{i}.attn_delta.{k}": v.to(dtype) for k, v in delta.items()})
    return state


def build_merged(cfg, info: dict):
    """An empty (meta-device) merged model of the right shape: a Llama or a Lavin plus its extras."""
    from eas.model.lavin import Lavin  # the decoder-only path must not need the vision stack
    with torch.device("meta"):
        model = Lavin(cfg) if hasattr(cfg, "vision") else Llama(cfg)
        llama = getattr(model, "llama", model)
        attach_extras(llama, info["mode"], info["adapter_dim"], info["skip_dim"], info["temperature"],
                      info.get("groups", 2), info.get("scale", 1.0))
        if hasattr(model, "visual"):
            attach_vision_extras(model.visual, info["mode"], info["adapter_dim"], info["temperature"])
    model.merge_info = info
    return model


@torch.no_grad()
def merge(model: nn.Module, mode: str) -> nn.Module:
    """A new plain model (skipped attentions absent, no adapters) computing the same function.

    Takes a Llama or a Lavin carrying adapters (eas.eas_model.add_adapters). A model without
    adapters is returned as an identical copy, so merging is idempotent.
    """
    if mode not in MODES:
        raise ValueError(f"merge mode must be one of {MODES}, got {mode!r}")
    eas = getattr(model, "eas", None)
    if eas is None:
        return copy.deepcopy(model)
    if mode == "dynamic" and any(isinstance(m, PIA) and m.fixed_route is not None for m in model.modules()):
        raise ValueError("dynamic merge routes per example, but this model has router constants: "
                         "call eas.calibrate.clear_routes(model) first")
    llama = getattr(model, "llama", model)
    p = llama.tok_embeddings.weight
    llama_cfg = merged_config(llama.cfg, [b.layer for b in llama.layers if b.skipped],
                              [b.layer for b in llama.layers if b.ffn_skipped])
    cfg = dataclasses.replace(model.cfg, llama=llama_cfg) if hasattr(model, "visual") else llama_cfg
    info = {"mode": mode, "unit": eas.unit, "adapter_dim": eas.adapter_dim, "skip_dim": eas.skip_dim,
            "temperature": eas.temperature, "groups": eas.groups, "scale": eas.scale,
            "router_constants": ([pia.fixed_route.tolist() for pia in model.modules()
                                  if isinstance(pia, PIA) and pia.fixed_route is not None]
                                 if mode == "static" else None)}
    out = build_merged(cfg, info)
    if hasattr(model, "visual"):
        state = {"llama." + k: v for k, v in _merge_state(llama, mode).items()}
        state.update({"visual." + k: v for k, v in _merge_vision_state(model.visual, mode).items()})
        state.update({k: v for k, v in model.state_dict().items() if k.startswith(("adapter_proj.", "adapter_modality"))})
    else:
        state = _merge_state(llama, mode)
    load_state_strict(out, state, "merge", keep_dtype=True)
    getattr(out, "llama", out).init_buffers(p.device)
    return out.eval()


@torch.no_grad()
def delete_attention(model: Llama, layers) -> Llama:
    """The floor a merge is measured against: the base model with these attentions simply removed."""
    cfg = dataclasses.replace(model.cfg, skip_layers=tuple(layers))
    state = {k: v for k, v in model.state_dict().items()
             if not any(k.startswith(f"layers.{i}.attention") for i in cfg.skip_layers)}
    with torch.device("meta"):
        out = Llama(cfg)
    load_state_strict(out, state, "delete_attention", dtype=model.tok_embeddings.weight.dtype)
    out.init_buffers(model.tok_embeddings.weight.device)
    return out.eval()
