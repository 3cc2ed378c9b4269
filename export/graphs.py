"""The exported graphs as modules around the model's own code (one code path with PyTorch).

    embed    tokens [B, T] (+ modality_slot [B, T], has_image [B])  -> embeds [B, T, C]
    vision   pixels [N, 3, S, S]                                     -> image_embeds [N, K, C]
             (LaVIN: ViT CLS taps + projector, K = 6; LLaVA: tower + mlp2x_gelu on patch tokens, K = grid²)
    prefill  embeds, positions, key_mask, prompt_mask [B, T]         -> logits [B, V],
             present.k.i / present.v.i [B, H, T, D] (kept layers), adapter tensors [B, ...]
    decode   token, position [B], length [], key_mask [B, S], past.k.i / past.v.i [B, H, S, D],
             adapter tensors                                         -> logits, present K/V [B, H, S, D]

The decode graph takes the model's own state (eas/model/state.py): K/V buffers of S slots, the
runtime's choice (prompt + answer), and `length`, the slot this step writes. It calls
Llama.decode_step, whose write is one ScatterElements per tensor, so present is past with slot
`length` written; a runtime that binds present to past's memory (ONNX Runtime IOBinding) updates
the cache in place, and a step reads each K/V once instead of copying it. key_mask marks the
filled slots; the step's own slot is made visible by the graph. Prefill calls Llama.prefill on a
state of exactly T slots; the runtime copies its present K/V into the first T slots of S.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from eas.adapters.attach import llama_of
from eas.model.lavin import Lavin
from eas.model.llama import Llama
from eas.model.llava import Llava


def wiring(model: nn.Module) -> str:
    """text (a bare LLaMA), lavin or llava: which sequence layout and graphs the export has."""
    if isinstance(model, Llava):
        return "llava"
    return "lavin" if isinstance(model, Lavin) else "text"


def n_image_tokens(model: nn.Module) -> int:
    """Image tokens per image: LaVIN's CLS taps or LLaVA's patch tokens."""
    return model.cfg.n_image_tokens if isinstance(model, Llava) else model.cfg.n_visual_tokens


@dataclass(frozen=True)
class StateLayout:
    """Which state tensors cross the prefill -> decode boundary, in graph order."""
    kv_layers: tuple[int, ...]
    adapter_names: tuple[str, ...]
    adapter_shapes: tuple[tuple[int, ...], ...]  # each adapter tensor is [B, *shape]

    def past(self) -> list[str]:
        return [f"past.{kv}.{i}" for i in self.kv_layers for kv in ("k", "v")]

    def present(self) -> list[str]:
        return [f"present.{kv}.{i}" for i in self.kv_layers for kv in ("k", "v")]


@torch.no_grad()
def state_layout(llama: Llama) -> StateLayout:
    """Run a 1x2 prefill to learn which per-example adapter tensors the model keeps in its state."""
    state = llama.new_state(1, 2)
    embeds = torch.zeros(1, 2, llama.cfg.dim, dtype=llama.tok_embeddings.weight.dtype)
    positions = torch.arange(2)[None]
    llama.prefill(embeds, positions, torch.ones(1, 2, dtype=torch.bool), state)
    kv = {f"{kv}.{i}" for i in llama.cfg.attention_layers for kv in ("k", "v")}
    adapters = tuple(n for n in state if n not in kv and n not in ("key_mask", "length"))
    return StateLayout(llama.cfg.attention_layers, adapters, tuple(tuple(state[n].shape[1:]) for n in adapters))


class EmbedGraph(nn.Module):
    """Token embeddings (LaVIN: and its modality embedding); image slots are overwritten afterwards."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.lavin = wiring(model) == "lavin"

    def input_names(self) -> list[str]:
        return ["tokens", "modality_slot", "has_image"] if self.lavin else ["tokens"]

    def output_names(self) -> list[str]:
        return ["embeds"]

    def forward(self, tokens, modality_slot=None, has_image=None):
        if self.lavin:
            return self.model.embed_text(tokens, modality_slot, has_image)
        return llama_of(self.model).tok_embeddings(tokens)


class VisionGraph(nn.Module):
    def __init__(self, lavin: nn.Module):
        super().__init__()
        self.lavin = lavin

    def input_names(self) -> list[str]:
        return ["pixels"]

    def output_names(self) -> list[str]:
        return ["image_embeds"]

    def forward(self, pixels):
        return self.lavin.image_tokens(pixels).to(self.lavin.llama.tok_embeddings.weight.dtype)


class PrefillGraph(nn.Module):
    def __init__(self, llama: Llama, layout: StateLayout):
        super().__init__()
        self.llama, self.layout = llama, layout

    def input_names(self) -> list[str]:
        return ["embeds", "positions", "key_mask", "prompt_mask"]

    def output_names(self) -> list[str]:
        return ["logits", *self.layout.present(), *self.layout.adapter_names]

    def forward(self, embeds, positions, key_mask, prompt_mask):
        state = self.llama.new_state(embeds.shape[0], embeds.shape[1])
        logits, state = self.llama.prefill(embeds, positions, key_mask, state, prompt_mask)
        kv = [state[f"{kv}.{i}"] for i in self.layout.kv_layers for kv in ("k", "v")]
        return (logits, *kv, *(state[n] for n in self.layout.adapter_names))


class DecodeGraph(nn.Module):
    def __init__(self, llama: Llama, layout: StateLayout):
        super().__init__()
        self.llama, self.layout = llama, layout

    def input_names(self) -> list[str]:
        return ["token", "position", "length", "key_mask", *self.layout.past(), *self.layout.adapter_names]

    def output_names(self) -> list[str]:
        return ["logits", *self.layout.present()]

    def forward(self, token, position, length, key_mask, *rest):
        n_kv = 2 * len(self.layout.kv_layers)
        past, adapters = rest[:n_kv], rest[n_kv:]
        names = [f"{kv}.{i}" for i in self.layout.kv_layers for kv in ("k", "v")]
        state = {"key_mask": key_mask, "length": length, **dict(zip(names, past)),
                 **dict(zip(self.layout.adapter_names, adapters))}
        logits, state = self.llama.decode_step(token, position, state)
        return (logits, *(state[n] for n in names))
