"""Analytic cost of inference for each EAS variant: parameters, FLOPs and bytes moved.

Variants (``KINDS``), for a LLaMA config with K of its L attentions skipped:
  base      the unpruned model
  unmerged  the EAS super-network (eas/adapters/blocks.py): PIA-A before every kept attention,
            PIA-S in place of every skipped one (both adapters exist in every layer)
  static    merged, routes fixed (eas/adapters/merged.py): the floor's layers, each kept attention
            norm adding a constant shift, each skipped layer's norm a per-example one (in the state)
  dynamic   merged, routed per example: a rank-2r correction per merged matrix
  floor     the base with the same K attentions simply deleted (no adapters)

Counting rules (one place, so tests and reports agree):
  * FLOPs = 2 x multiply-adds of the matmuls (weights and attention scores/values); norms,
    activations, RoPE, softmax, biases and shifts are left out.
  * Weight bytes of a decode step = every parameter the step reads, once per step whatever the
    batch (matrices, biases, norm gains; one embedding row per example); parameters used only at
    prefill (pooling, routers) or idle (the unmerged model's skipped attentions) are not read.
  * K/V bytes: a decode step at context c (keys attended, the new one included) reads 2·c·kv and
    writes 2·kv elements per kept layer and example, kv = n_kv_heads·head_dim.
  * Prefill of T tokens: logits only at the last position; causal attention over t = 1..T keys.
  * Per-example adapter state (a static skipped layer's shift: dim values) is left out.

The ideal speed-up of a variant over base is FLOP-bound for prefill and bandwidth-bound for decode.
"""
from __future__ import annotations

from dataclasses import dataclass

from eas.model.config import LlamaConfig

KINDS = ("base", "unmerged", "static", "dynamic", "floor")


@dataclass(frozen=True)
class Adapters:
    """EAS adapter shapes: PIA-A width, PIA-S width, groups of the grouped up-projections."""
    adapter_dim: int = 8
    skip_dim: int = 32
    groups: int = 2


@dataclass(frozen=True)
class LayerCost:
    macs: int    # matmul multiply-adds per token (attention scores excluded)
    read: int    # parameter elements a decode step reads
    params: int  # parameter elements the layer holds


@dataclass(frozen=True)
class Cost:
    params: int
    flops: float
    weight_bytes: float
    kv_read_bytes: float
    kv_write_bytes: float

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.kv_read_bytes + self.kv_write_bytes


def _pia(d: int, r: int, groups: int, pooled: bool) -> tuple[int, int, int]:
    """(macs, read, params) of one unmerged PIA at decode: down, two grouped ups, (down_pool, router)."""
    ups = 2 * (d * r // groups + d)
    macs = d * r + 2 * d * r // groups
    read = d * r + r + ups
    params = read + (d * r + r if pooled else 0) + 2 * d + 2
    return macs, read, params


def _routed(d: int, r: int, out: int, pooled: bool) -> tuple[int, int, int]:
    """(macs, read, params) of a dynamic merge's RoutedDelta: down, rank-2r up, route bias."""
    macs = d * r + 2 * r * out + 2 * out
    read = d * r + r + 2 * r * out + 2 * out
    params = read + (d * r + r if pooled else 0) + 2 * d + 2
    return macs, read, params


def layer_cost(cfg: LlamaConfig, kind: str, skipped: bool, ad: Adapters) -> LayerCost:
    """Cost of one decoder layer of variant `kind`, the layer's attention skipped or kept."""
    d, F = cfg.dim, cfg.hidden_dim
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    qkv = q + 2 * kv
    att, ffn = d * qkv + q * d, 3 * d * F
    if kind not in KINDS:
        raise ValueError(f"variant {kind!r}: expected one of {KINDS}")
    if kind == "base" or (kind == "floor" and not skipped):
        return LayerCost(att + ffn, att + ffn + 2 * d, att + ffn + 2 * d)
    if kind == "floor":
        return LayerCost(ffn, ffn + d, ffn + d)
    if kind == "unmerged":
        a, s = _pia(d, ad.adapter_dim, ad.groups, False), _pia(d, ad.skip_dim, ad.groups, True)
        params = att + ffn + 2 * d + a[2] + s[2]
        if skipped:  # x̂ = attention_norm(x); PIA-S; ffn_norm's gain; FFN
            return LayerCost(ffn + s[0], ffn + 2 * d + s[1], params)
        return LayerCost(att + ffn + a[0], att + ffn + 2 * d + a[1], params)
    if not skipped:  # merged kept layer: the attention norm's shift, or the routed correction
        extra = _routed(d, ad.adapter_dim, qkv, False) if kind == "dynamic" else (0, d, d)
        read = att + ffn + 2 * d + extra[1]
        return LayerCost(att + ffn + extra[0], read, read + extra[2] - extra[1])
    read = ffn + d  # merged skipped layer: FFN and ffn_norm
    if kind == "static":  # PooledShift: down_pool, proj and shift run once per example at prefill
        return LayerCost(ffn, read, read + 2 * d * ad.skip_dim + ad.skip_dim + d)
    extra = _routed(d, ad.skip_dim, 2 * F, True)
    return LayerCost(ffn + extra[0], read + extra[1], read + extra[2])


def _layers(cfg: LlamaConfig, kind: str, k: int, ad: Adapters) -> tuple[LayerCost, int]:
    """Sum over layers, and the number of layers holding K/V."""
    if not 0 <= k <= cfg.n_layers:
        raise ValueError(f"K={k} skipped attentions: expected 0..{cfg.n_layers}")
    k = 0 if kind == "base" else k
    kept, skip = layer_cost(cfg, kind, False, ad), layer_cost(cfg, kind, True, ad)
    n = cfg.n_layers - k
    return LayerCost(*(n * a + k * b for a, b in zip(
        (kept.macs, kept.read, kept.params), (skip.macs, skip.read, skip.params)))), n


def params(cfg: LlamaConfig, kind: str, k: int, ad: Adapters = Adapters()) -> int:
    """Parameter count of the variant (embedding, final norm and output included)."""
    layers, _ = _layers(cfg, kind, k, ad)
    return layers.params + 2 * cfg.vocab_size * cfg.dim + cfg.dim


def decode_step(cfg: LlamaConfig, kind: str, k: int, context: int, batch: int = 1,
                ad: Adapters = Adapters(), weight_bytes: int = 4, kv_bytes: int = 4) -> Cost:
    """One decode step of `batch` examples attending over `context` keys (the new one included)."""
    layers, n_att = _layers(cfg, kind, k, ad)
    d, V = cfg.dim, cfg.vocab_size
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    macs = batch * (layers.macs + V * d + n_att * 2 * q * context)
    read = layers.read + d + V * d + batch * d  # final norm, output, embedding rows
    return Cost(params(cfg, kind, k, ad), 2.0 * macs, float(read * weight_bytes),
                float(batch * n_att * 2 * kv * context * kv_bytes), float(batch * n_att * 2 * kv * kv_bytes))


def prefill(cfg: LlamaConfig, kind: str, k: int, tokens: int, batch: int = 1,
            ad: Adapters = Adapters(), weight_bytes: int = 4, kv_bytes: int = 4) -> Cost:
    """A prompt of `tokens` positions per example: logits at the last one, causal attention."""
    layers, n_att = _layers(cfg, kind, k, ad)
    d, V, T = cfg.dim, cfg.vocab_size, tokens
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    macs = batch * (T * layers.macs + V * d + n_att * q * T * (T + 1))  # sum_t 2·q·t
    read = layers.read + d + V * d + batch * T * d
    return Cost(params(cfg, kind, k, ad), 2.0 * macs, float(read * weight_bytes),
                float(batch * n_att * 2 * kv * T * (T + 1) // 2 * kv_bytes),
                float(batch * n_att * 2 * kv * T * kv_bytes))


def kv_cache_bytes(cfg: LlamaConfig, kind: str, k: int, batch: int, slots: int, elem_bytes: int = 4) -> int:
    """Bytes of the K/V buffers of `slots` positions: only kept attentions hold K/V."""
    n_att = cfg.n_layers - (0 if kind == "base" else k)
    return batch * slots * n_att * 2 * cfg.n_kv_heads * cfg.head_dim * elem_bytes


def ideal_speedup(cfg: LlamaConfig, kind: str, k: int, prompt: int, generated: int, batch: int = 1,
                  ad: Adapters = Adapters(), elem_bytes: int = 4) -> dict[str, float]:
    """Ideal speed-up over base: prefill by FLOPs, decode by bytes moved at the mean decode context."""
    context = prompt + (generated + 1) / 2
    out = {}
    for phase, fn, what in (("prefill", prefill, "flops"), ("decode", decode_step, "bytes")):
        arg = prompt if phase == "prefill" else context
        base = getattr(fn(cfg, "base", 0, arg, batch, ad, elem_bytes, elem_bytes), what)
        out[phase] = base / getattr(fn(cfg, kind, k, arg, batch, ad, elem_bytes, elem_bytes), what)
    return out
