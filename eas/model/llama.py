"""LLaMA decoder (Meta parameter names), written from scratch.

Sequences are left-padded: every example's last prompt token sits in the same cache slot, so a
batch decodes in lock-step. RoPE positions are per example (``positions``), cache slots are shared.
A key mask says which keys later queries may see (padding and LaVIN's modality token are
invisible; every query still sees itself).

Inference state is explicit (eas/model/state.py): ``prefill`` and ``decode_step`` take and return
a dict of tensors, so the same functions export, compile and map onto a C++ runtime's buffers.
Layers listed in ``cfg.no_attention`` / ``cfg.no_ffn`` have that unit physically absent.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from eas.model.config import LlamaConfig
from eas.model.state import State, advance, new_state, tracing, write_keys, write_kv


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


def llama3_frequencies(freqs: torch.Tensor, scaling: dict) -> torch.Tensor:
    """Llama-3's long-context RoPE: wavelengths beyond the original context are stretched by
    `factor`, those under original / high_freq_factor kept, the band between interpolated."""
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    context = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / freqs
    smooth = ((context / wavelen - low) / (high - low)).clamp(0, 1)
    return (1 - smooth) * freqs / factor + smooth * freqs


def rope_tables(head_dim: int, n_positions: int, theta: float, device=None,
                scaling: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) / head_dim)
    if scaling is not None:
        freqs = llama3_frequencies(freqs, scaling)
    angles = torch.outer(torch.arange(n_positions, device=device, dtype=torch.float64), freqs)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Meta's interleaved convention: channel pairs (2i, 2i+1) rotate as one complex number,
    (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin).

    x: [B, H, T, D]; cos/sin: [B, 1, T, D] gathered at the positions from Llama's tables, each angle
    twice, sin signed (-, +) per pair: one multiply-add with x and with x's pairs swapped.
    """
    if tracing():
        return _rope_graph(x, cos, sin)
    xf = x.float()
    swapped = xf.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return (xf * cos + swapped * sin).type_as(x)


def _rope_graph(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """apply_rope as written into an ONNX graph, with constants built from Python data (not traced
    ops). The pair swap is x @ P, P a permutation (exact: one 1 per column), one node instead of
    three. For a single token (the decode graph, traced with T = 1) the whole rotation is one
    MatMul with R = I·cos + P·sin [B, 1, D, D], in x's dtype: every layer builds the same R from the
    same inputs, and ONNX Runtime's common-subexpression pass computes it once per step."""
    d = x.shape[-1]
    swap = torch.tensor([[float(i == j ^ 1) for j in range(d)] for i in range(d)])
    if x.shape[-2] == 1:
        eye = torch.tensor([[float(i == j) for j in range(d)] for i in range(d)])
        return x @ (eye * cos + swap * sin).to(x.dtype)
    return (x.float() * cos + (x @ swap.to(x.dtype)).float() * sin).type_as(x)


def attention_mask(key_mask: torch.Tensor, first_query: torch.Tensor | int, n_queries: int) -> torch.Tensor:
    """Boolean [B, 1, T, S]: query t sits in slot first_query + t and sees visible keys up to its
    own slot, and always itself. key_mask [B, S] covers every slot the queries may read."""
    S = key_mask.shape[1]
    q_slot = (first_query + torch.arange(n_queries, device=key_mask.device))[:, None]
    k_slot = torch.arange(S, device=key_mask.device)[None, :]
    allowed = (k_slot <= q_slot) & (key_mask[:, None, :] | (k_slot == q_slot))
    return allowed[:, None]


def replay_generators(module: nn.Module):
    """Activation checkpointing's context_fn: the recomputation in backward draws again what the
    forward drew from explicit generators (a module's ``generator``, e.g. seeded dropout); torch
    itself replays only its global RNG. Called at forward time, so it records the states then."""
    gens = list({id(g): g for m in module.modules()
                 if isinstance(g := getattr(m, "generator", None), torch.Generator)}.values())
    start = [g.get_state() for g in gens]

    @contextlib.contextmanager
    def recompute():
        now = [g.get_state() for g in gens]
        for g, s in zip(gens, start):
            g.set_state(s)
        try:
            yield
        finally:
            for g, s in zip(gens, now):
                g.set_state(s)

    return contextlib.nullcontext(), recompute()


@dataclass
class Context:
    """What every block of one forward pass shares.

    state: None for a stateless pass (training, scoring); at prefill an empty state that the pass
    fills; at decode the state it reads and updates. prompt_mask marks the prompt positions of
    this pass (what adapters may summarise); key_mask its keys that later queries may see.
    """
    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor
    key_mask: torch.Tensor
    prompt_mask: torch.Tensor
    state: State | None = None
    decoding: bool = False


def stacked_bias(linears) -> torch.Tensor | None:
    return None if linears[0].bias is None else torch.cat([lin.bias for lin in linears])


def project(x: torch.Tensor, linears, add: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """x through sibling Linears, plus `add` over their stacked outputs (default: their biases;
    a caller passing `add` includes them). In an ONNX export: one MatMul over the stacked weights
    (the exporter folds the stacking into one constant), one Add, one Split, not a node per Linear."""
    sizes = [lin.out_features for lin in linears]
    if tracing():
        out = x @ torch.cat([lin.weight for lin in linears]).T
        add = stacked_bias(linears) if add is None else add
        return (out if add is None else out + add).split(sizes, -1)
    if add is None:
        return tuple(lin(x) for lin in linears)
    return tuple(F.linear(x, lin.weight) + a for lin, a in zip(linears, add.split(sizes, -1)))


def heads(x: torch.Tensor, n: int) -> torch.Tensor:
    """[B, T, n*D] -> head-major [B, n, T, D], the K/V state's layout."""
    return x.unflatten(-1, (n, -1)).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, xn: torch.Tensor, ctx: Context, layer: int) -> torch.Tensor:
        return self.attend(*project(xn, (self.wq, self.wk, self.wv)), ctx, layer)

    def attend(self, q, k, v, ctx: Context, layer: int) -> torch.Tensor:
        """Attention of projected activations q, k, v [B, T, H*D]; returns wo(attention)."""
        q = apply_rope(heads(q, self.n_heads), ctx.cos, ctx.sin)
        k = apply_rope(heads(k, self.n_kv_heads), ctx.cos, ctx.sin)
        v = heads(v, self.n_kv_heads)
        if ctx.state is not None:
            k, v = write_kv(ctx.state, layer, k, v, ctx.decoding)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.mask, enable_gqa=self.n_heads != self.n_kv_heads)
        return self.wo(out.transpose(1, 2).flatten(-2))


class FeedForward(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.w2 = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = project(x, (self.w1, self.w3))
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm LLaMA block; its attention or FFN is absent where the config says so."""

    def __init__(self, cfg: LlamaConfig, layer: int):
        super().__init__()
        self.layer = layer
        has_attention, has_ffn = layer not in cfg.no_attention, layer not in cfg.no_ffn
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps) if has_attention else None
        self.attention = Attention(cfg) if has_attention else None
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps) if has_ffn else None
        self.feed_forward = FeedForward(cfg) if has_ffn else None

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        if self.attention is not None:
            x = x + self.attention(self.attention_norm(x), ctx, self.layer)
        if self.feed_forward is not None:
            x = x + self.feed_forward(self.ffn_norm(x))
        return x


class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        # Recompute each block's activations in backward instead of storing them (7B tuning on
        # one GPU); the stateless training path only.
        self.grad_checkpointing = False
        self.init_buffers()

    def init_buffers(self, device=None):
        """(Re)build the RoPE tables; needed after constructing on the meta device."""
        device = device if device is not None else self.tok_embeddings.weight.device
        if device.type == "meta":
            device = None
        cos, sin = rope_tables(self.cfg.head_dim, 2 * self.cfg.max_seq_len, self.cfg.rope_theta, device,
                               self.cfg.rope_scaling)
        # apply_rope's layout: [n, D], each angle for both channels of its pair, sin signed (-, +)
        self.register_buffer("rope_cos", cos.repeat_interleave(2, -1), persistent=False)
        self.register_buffer("rope_sin", torch.stack((-sin, sin), -1).flatten(-2), persistent=False)

    def init_weights(self, generator: torch.Generator | None = None, std: float = 0.02):
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, std=std, generator=generator)
        return self

    def new_state(self, batch: int, max_len: int, dtype=None, device=None) -> State:
        """Empty inference state: K/V buffers [batch, max_len, ...] for the layers with attention."""
        if max_len > 2 * self.cfg.max_seq_len:
            raise ValueError(f"state length {max_len} exceeds the RoPE table (2 x max_seq_len={self.cfg.max_seq_len})")
        p = self.tok_embeddings.weight
        return new_state(self.cfg, batch, max_len, dtype or p.dtype, device or p.device)

    def run_blocks(self, h: torch.Tensor, ctx: Context) -> torch.Tensor:
        checkpointing = (self.grad_checkpointing and self.training and ctx.state is None
                         and torch.is_grad_enabled())
        for block in self.layers:
            if checkpointing:
                h = checkpoint(block, h, ctx, use_reentrant=False, context_fn=partial(replay_generators, block))
            else:
                h = block(h, ctx)
        return self.norm(h)

    def context(self, positions, key_mask, prompt_mask=None, state: State | None = None, decoding=False) -> Context:
        """prompt_mask [B, T]: prompt positions (default: the visible keys)."""
        T = positions.shape[1]
        if state is None:
            mask = attention_mask(key_mask, 0, T)
        else:
            all_keys = write_keys(state, key_mask)
            if decoding:  # one query in the newest filled slot, which decode_step writes visible:
                mask = all_keys[:, None, None]  # it sees exactly the visible keys
            else:  # prefill: the prompt's own T slots are all there is
                mask = attention_mask(all_keys[:, :T], state["length"], T)
        return Context(self.rope_cos[positions][:, None], self.rope_sin[positions][:, None], mask, key_mask,
                       key_mask if prompt_mask is None else prompt_mask, state, decoding)

    def hidden(self, h, positions, key_mask, prompt_mask=None) -> torch.Tensor:
        """Stateless pass over embeddings h [B, T, C] (training, scoring): final-norm hidden states."""
        return self.run_blocks(h, self.context(positions, key_mask, prompt_mask))

    def forward(self, tokens, positions=None, key_mask=None):
        """Training/scoring path without state: logits at every position."""
        B, T = tokens.shape
        if positions is None:
            positions = torch.arange(T, device=tokens.device).expand(B, T)
        if key_mask is None:
            key_mask = torch.ones(B, T, dtype=torch.bool, device=tokens.device)
        return self.output(self.hidden(self.tok_embeddings(tokens), positions, key_mask))

    def prefill(self, h, positions, key_mask, state: State, prompt_mask=None) -> tuple[torch.Tensor, State]:
        """Embeddings of a left-padded prompt batch and an empty state -> (last-position logits
        [B, V], state). Adapters compute their per-example tensors here and store them in state."""
        ctx = self.context(positions, key_mask, prompt_mask, state)
        logits = self.output(self.run_blocks(h, ctx)[:, -1])
        return logits, advance(state, h.shape[1])

    def decode_step(self, tokens, positions, state: State) -> tuple[torch.Tensor, State]:
        """One new token per example (tokens, positions: [B]) -> (logits [B, V], state)."""
        h = self.tok_embeddings(tokens[:, None])
        visible = torch.ones_like(tokens, dtype=torch.bool)[:, None]
        ctx = self.context(positions[:, None], visible, None, state, decoding=True)
        logits = self.output(self.run_blocks(h, ctx)[:, -1])
        return logits, advance(state, 1)
