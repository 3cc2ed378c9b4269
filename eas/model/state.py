"""The explicit inference state of a decoder: a flat dict of named tensors, nothing else.

    k.{layer}, v.{layer}   [B, n_kv_heads, max_len, head_dim]  only for layers with attention
                                                                (head-major: attention reads each
                                                                head's keys in place, no transpose)
    key_mask               [B, max_len] bool                   slots later queries may see
    length                 [] int64                            slots filled so far
    adapter tensors        per example, frozen at prefill       named by the module that made them
                                                                (e.g. layers.3.adapter_skip.route)

Buffers are preallocated and written by index, in place, so their addresses never change (CUDA
graphs, a C++ runtime's bindings); prefill fills slots 0..T-1, each decode step slot `length`.
In a trace (the ONNX export) the write is a functional scatter: the graph returns the written
buffer, and a runtime that binds that output to the input's memory updates the cache in place.
The names are the graph input/output names of the exported model.
"""
from __future__ import annotations

import torch

from eas.model.config import LlamaConfig

State = dict[str, torch.Tensor]


def new_state(cfg: LlamaConfig, batch: int, max_len: int, dtype, device) -> State:
    shape = (batch, cfg.n_kv_heads, max_len, cfg.head_dim)
    state: State = {}
    for i in cfg.attention_layers:
        state[f"k.{i}"] = torch.zeros(shape, dtype=dtype, device=device)
        state[f"v.{i}"] = torch.zeros(shape, dtype=dtype, device=device)
    state["key_mask"] = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
    state["length"] = torch.zeros((), dtype=torch.long, device=device)
    return state


def tracing() -> bool:
    """In a trace (the ONNX export traces the model), where graph-friendly forms of the same math
    are used. torch.jit.is_tracing costs ~0.1 µs; torch.onnx.is_in_onnx_export ~1.4 µs, and the
    eager decode step asks 4 times per layer."""
    return torch.jit.is_tracing()


def _write(state: State, name: str, new: torch.Tensor, dim: int) -> torch.Tensor:
    """Put new's T slots (along `dim`) at slots length..length+T-1 of state[name]; returns the buffer."""
    buf, new = state[name], new.to(state[name].dtype)
    if tracing():  # one ScatterElements, its output the written buffer (in place where bound so)
        state[name] = buf.scatter(dim, _slot_index(state, new, dim), new)
        return state[name]
    buf.index_copy_(dim, state["length"] + torch.arange(new.shape[dim], device=buf.device), new)
    return buf


def _slot_index(state: State, new: torch.Tensor, dim: int) -> torch.Tensor:
    """ScatterElements' index: slot length + t at every element of new's slice t along `dim`. Built
    once per trace and shape and kept in the state, so a graph has one index, not one per layer."""
    key = f"index.{dim}." + "x".join(map(str, new.shape))
    if key not in state:
        slots = state["length"] + torch.arange(new.shape[dim], device=new.device)
        state[key] = slots.view([-1 if d == dim else 1 for d in range(new.dim())]).expand_as(new)
    return state[key]


def write_kv(state: State, layer: int, k: torch.Tensor, v: torch.Tensor, decoding: bool):
    """Store the new keys/values [B, H, T, D] of `layer` at slots length..length+T-1.

    Returns what this pass attends over: at prefill the prompt's own k, v; at decode the whole
    buffers (unfilled slots are masked by key_mask)."""
    kb, vb = _write(state, f"k.{layer}", k, 2), _write(state, f"v.{layer}", v, 2)
    return (kb, vb) if decoding else (k, v)


def write_keys(state: State, key_mask: torch.Tensor) -> torch.Tensor:
    """Store which of this pass's T slots later queries may see; returns the whole key_mask."""
    return _write(state, "key_mask", key_mask, 1)


def advance(state: State, n: int) -> State:
    state["length"] = state["length"] + n
    return state


def kv_bytes(state: State) -> int:
    """Bytes held by the K/V buffers (the part of the state that grows with context)."""
    return sum(t.numel() * t.element_size() for name, t in state.items() if name[:2] in ("k.", "v."))


def per_example(state: State | None, name: str, decoding: bool, compute):
    """An adapter's per-example tensor: computed every pass without a state, computed once at
    prefill and stored under `name`, read back at decode."""
    if state is None:
        return compute()
    if not decoding:
        state[name] = compute()
    return state[name]
