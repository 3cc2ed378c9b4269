"""KV cache that allocates slots only for layers whose attention is present."""
from __future__ import annotations

import torch

from eas.model.config import LlamaConfig


class KVCache:
    """Preallocated K/V buffers [B, max_len, n_kv_heads, head_dim] per kept layer.

    ``length`` (a Python int) counts the filled slots; every forward writes its T new keys at
    slots length..length+T-1 of each kept layer, then the model calls ``advance(T)``.
    ``key_mask`` [B, max_len] records which slots later queries may attend to.
    """

    def __init__(self, cfg: LlamaConfig, batch: int, max_len: int, dtype, device):
        if max_len > 2 * cfg.max_seq_len:
            raise ValueError(f"cache length {max_len} exceeds the RoPE table (2 x max_seq_len={cfg.max_seq_len})")
        shape = (batch, max_len, cfg.n_kv_heads, cfg.head_dim)
        self.k = {i: torch.zeros(shape, dtype=dtype, device=device) for i in cfg.kept_layers}
        self.v = {i: torch.zeros(shape, dtype=dtype, device=device) for i in cfg.kept_layers}
        self.key_mask = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.max_len = max_len
        self.length = 0
        # Per-example adapter state (router weights, pooled features, bias vectors) frozen at
        # prefill, keyed by the adapter module that computed it.
        self.frozen: dict[object, object] = {}

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.k.values(), *self.v.values()))

    def extend_mask(self, new_visible: torch.Tensor) -> torch.Tensor:
        """Record visibility of the T incoming keys; return the mask over all filled slots."""
        end = self.length + new_visible.shape[1]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} slots needed, {self.max_len} allocated")
        self.key_mask[:, self.length:end] = new_visible
        return self.key_mask[:, :end]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        end = self.length + k.shape[1]
        self.k[layer][:, self.length:end] = k
        self.v[layer][:, self.length:end] = v
        return self.k[layer][:, :end], self.v[layer][:, :end]

    def advance(self, n: int) -> None:
        self.length += n
