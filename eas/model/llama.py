"""LLaMA decoder (Meta parameter names), written from scratch.

Sequences are left-padded: every example's last prompt token sits in the same cache slot, so a
batch decodes in lock-step. RoPE positions are per example (``positions``), cache slots are shared.
A key mask says which cached keys later queries may see (padding and LaVIN's modality token are
invisible; every query still sees itself).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from eas.model.config import LlamaConfig
from eas.model.kv_cache import KVCache


def rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / rms(x) computed in fp32, without a gain."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_normalize(x, self.eps) * self.weight


def rope_tables(head_dim: int, n_positions: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(n_positions, device=device, dtype=torch.float64), freqs)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Meta's interleaved convention: channel pairs (2i, 2i+1) rotate as one complex number.

    x: [B, T, H, D]; cos/sin: [B, T, D/2] already gathered at the positions.
    """
    xf = x.float().unflatten(-1, (-1, 2))
    even, odd = xf[..., 0], xf[..., 1]
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    out = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return out.flatten(-2).type_as(x)


def attention_mask(key_mask: torch.Tensor, n_queries: int) -> torch.Tensor:
    """Boolean [B, 1, T, S] mask for the last T of S slots: causal, visible keys, and the diagonal."""
    S = key_mask.shape[1]
    q_slot = torch.arange(S - n_queries, S, device=key_mask.device)[:, None]
    k_slot = torch.arange(S, device=key_mask.device)[None, :]
    allowed = (k_slot <= q_slot) & (key_mask[:, None, :] | (k_slot == q_slot))
    return allowed[:, None]


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, q, k, v, cos, sin, mask, cache: KVCache | None, layer: int):
        """q, k, v: projected activations [B, T, H*D]; returns wo(attention)."""
        B, T, _ = q.shape
        q = apply_rope(q.view(B, T, self.n_heads, self.head_dim), cos, sin)
        k = apply_rope(k.view(B, T, self.n_kv_heads, self.head_dim), cos, sin)
        v = v.view(B, T, self.n_kv_heads, self.head_dim)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        S, rep = k.shape[1], self.n_heads // self.n_kv_heads
        k = k.transpose(1, 2)[:, :, None].expand(B, self.n_kv_heads, rep, S, self.head_dim)
        v = v.transpose(1, 2)[:, :, None].expand(B, self.n_kv_heads, rep, S, self.head_dim)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.reshape(B, self.n_heads, S, self.head_dim),
            v.reshape(B, self.n_heads, S, self.head_dim), attn_mask=mask)
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    def __init__(self, cfg: LlamaConfig, bias: bool = False):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=bias)
        self.w2 = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=bias)

    def forward(self, x: torch.Tensor, delta: torch.Tensor | None = None) -> torch.Tensor:
        """delta: optional correction of the concatenated [w1 x | w3 x] (merged adapters)."""
        gate, up = self.w1(x), self.w3(x)
        if delta is not None:
            d_gate, d_up = delta.chunk(2, dim=-1)
            gate, up = gate + d_gate, up + d_up
        return self.w2(F.silu(gate) * up)


@dataclass
class Context:
    """What every block of one forward pass shares."""
    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor
    cache: KVCache | None
    pool_mask: torch.Tensor   # prompt positions that adapters pool over
    route_mask: torch.Tensor  # prompt positions the routers read (pool_mask minus invisible tokens)

    def state(self, module, xn: torch.Tensor):
        """Per-example adapter state: recomputed without a cache, frozen at prefill with one."""
        if self.cache is None:
            return module.context(xn, self.pool_mask, self.route_mask)
        if module not in self.cache.frozen:
            self.cache.frozen[module] = module.context(xn, self.pool_mask, self.route_mask)
        return self.cache.frozen[module]


class Block(nn.Module):
    """Pre-norm LLaMA block. ``skipped``: no attention; ``ffn_skipped``: no FFN (both: the layer).

    The optional modules are EAS extension points (eas/eas_model.py, eas/merge.py), each with
    ``context(xn, pool_mask, route_mask) -> state`` and ``forward(xn, state)``:
    adapter_attn (PIA-A, before attention), adapter_skip (PIA-S: replaces attention and feeds the
    FFN, or replaces a skipped FFN/layer by its Δ), attn_delta / ffn_delta (merged form: per-example
    correction of [q|k|v] / [w1 x|w3 x]), residual_adapter (merged form of a skipped FFN/layer:
    PIA-S's Δ on the gain-free normalised input, the norm's gain folded into it).
    """

    def __init__(self, cfg: LlamaConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.skipped = layer in cfg.skip_layers
        self.ffn_skipped = layer in cfg.skip_ffn_layers
        self.eps = cfg.norm_eps
        self.attention_norm = None if self.skipped else RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = None if self.skipped else Attention(cfg)
        self.ffn_norm = None if self.ffn_skipped else RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = None if self.ffn_skipped else FeedForward(cfg, bias=cfg.ffn_bias and self.skipped)
        self.adapter_attn = self.adapter_skip = self.attn_delta = self.ffn_delta = self.residual_adapter = None

    def _delta(self, module, xn, ctx: Context):
        return None if module is None else module(xn, ctx.state(module, xn))

    def forward(self, x, ctx: Context):
        if self.skipped and not self.ffn_skipped and self.adapter_skip is not None:
            xn = self.attention_norm(x)  # eas_method.md §1.4: x + FFN(γ_ffn ⊙ PIA-S(RMSNorm_att(x)))
            z = xn + self.adapter_skip(xn, ctx.state(self.adapter_skip, xn))
            return x + self.feed_forward(self.ffn_norm.weight * z)
        h = x if self.skipped else self._attend(x, ctx)
        if not self.ffn_skipped:
            xn = self.ffn_norm(h)
            return h + self.feed_forward(xn, self._delta(self.ffn_delta, xn, ctx))
        if self.adapter_skip is not None:  # DAS-style: the removed unit's input norm, then Δ
            xn = (self.attention_norm if self.skipped else self.ffn_norm)(h)
            return h + self.adapter_skip(xn, ctx.state(self.adapter_skip, xn))
        if self.residual_adapter is not None:
            xn = rms_normalize(h, self.eps)
            return h + self.residual_adapter(xn, ctx.state(self.residual_adapter, xn))
        return h

    def _attend(self, x, ctx: Context):
        xn = self.attention_norm(x)
        if self.adapter_attn is not None:
            xn = xn + self.adapter_attn(xn, ctx.state(self.adapter_attn, xn))
        a = self.attention
        q, k, v = a.wq(xn), a.wk(xn), a.wv(xn)
        delta = self._delta(self.attn_delta, xn, ctx)
        if delta is not None:
            dq, dk, dv = delta.split([q.shape[-1], k.shape[-1], v.shape[-1]], dim=-1)
            q, k, v = q + dq, k + dk, v + dv
        return x + a(q, k, v, ctx.cos, ctx.sin, ctx.mask, ctx.cache, self.layer)


class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        # Recompute each block's activations in backward instead of storing them (7B tuning on
        # one GPU); training path only, the cached inference path never checkpoints.
        self.grad_checkpointing = False
        self.init_buffers()

    def init_buffers(self, device=None):
        """(Re)build the RoPE tables; needed after constructing on the meta device."""
        device = device if device is not None else self.tok_embeddings.weight.device
        if device.type == "meta":
            device = None
        cos, sin = rope_tables(self.cfg.head_dim, 2 * self.cfg.max_seq_len, self.cfg.rope_theta, device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def init_weights(self, generator: torch.Generator | None = None, std: float = 0.02):
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, std=std, generator=generator)
        return self

    def new_cache(self, batch: int, max_len: int, dtype=None, device=None) -> KVCache:
        p = self.tok_embeddings.weight
        return KVCache(self.cfg, batch, max_len, dtype or p.dtype, device or p.device)

    def hidden(self, h, positions, key_mask, cache: KVCache | None = None, prompt_mask=None):
        """Run the decoder stack on embeddings h [B, T, C]; returns final-norm hidden states.

        prompt_mask [B, T]: positions adapters may pool over (default: the visible keys). Routers
        read prompt_mask & key_mask, so LaVIN's modality token is pooled but not routed on.
        """
        T = h.shape[1]
        if prompt_mask is None:
            prompt_mask = key_mask
        route_mask = prompt_mask & key_mask
        all_keys = key_mask if cache is None else cache.extend_mask(key_mask)
        ctx = Context(self.rope_cos[positions], self.rope_sin[positions], attention_mask(all_keys, T),
                      cache, prompt_mask, route_mask)
        checkpointing = self.grad_checkpointing and self.training and cache is None and torch.is_grad_enabled()
        for block in self.layers:
            h = checkpoint(block, h, ctx, use_reentrant=False) if checkpointing else block(h, ctx)
        if cache is not None:
            cache.advance(T)
        return self.norm(h)

    def forward(self, tokens, positions=None, key_mask=None):
        """Training/scoring path without a cache: logits at every position."""
        B, T = tokens.shape
        if positions is None:
            positions = torch.arange(T, device=tokens.device).expand(B, T)
        if key_mask is None:
            key_mask = torch.ones(B, T, dtype=torch.bool, device=tokens.device)
        return self.output(self.hidden(self.tok_embeddings(tokens), positions, key_mask))

    def prefill(self, h, positions, key_mask, cache: KVCache, prompt_mask=None) -> torch.Tensor:
        """Embeddings of a left-padded prompt batch -> logits of the last position [B, V].

        Adapter routing and pooling are computed here and frozen in the cache for decoding.
        """
        return self.output(self.hidden(h, positions, key_mask, cache, prompt_mask)[:, -1])

    def decode_step(self, tokens, positions, cache: KVCache) -> torch.Tensor:
        """One new token per example (tokens, positions: [B]) -> logits [B, V]."""
        h = self.tok_embeddings(tokens[:, None])
        visible = torch.ones_like(tokens, dtype=torch.bool)[:, None]
        return self.output(self.hidden(h, positions[:, None], visible, cache)[:, -1])
