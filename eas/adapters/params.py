"""Trainable-parameter accounting, counting only the adapters in use (as the paper does)."""
from __future__ import annotations

from torch import nn


def _unused_adapter_params(model: nn.Module) -> set[int]:
    """PIA-S of layers with nothing skipped and PIA-A of layers without attention exist (for the
    search) but do not run."""
    llama = getattr(model, "llama", model)
    unused = set()
    for block in llama.layers:
        idle = [block.adapter_attn] if block.skipped else []
        if not (block.skipped or block.ffn_skipped):
            idle.append(block.adapter_skip)
        unused |= {id(p) for m in idle if m is not None for p in m.parameters()}
    return unused


def trainable_report(model: nn.Module) -> dict:
    """Counts by name: 'adapter' parameters are trainable (LaVIN's rule; minus any frozen on purpose,
    e.g. eas.eas_model.freeze_routers), the rest is the frozen base.

    share_of_llm divides by the LLaMA decoder's parameters, the denominator that reproduces the
    paper's percentages; share_of_model divides by every frozen parameter (LLaMA + ViT).
    Works on meta-device models: only shapes are read.
    """
    unused = _unused_adapter_params(model)
    trainable = sum(p.numel() for n, p in model.named_parameters()
                    if "adapter" in n and p.requires_grad and id(p) not in unused)
    frozen = sum(p.numel() for n, p in model.named_parameters() if "adapter" not in n)
    llama = getattr(model, "llama", model)
    llm = sum(p.numel() for n, p in llama.named_parameters() if "adapter" not in n)
    return {"trainable": trainable, "frozen": frozen, "llm": llm,
            "share_of_llm": trainable / llm, "share_of_model": trainable / frozen}
