"""Trainable-parameter accounting, counting only the adapters in use (as the paper does)."""
from __future__ import annotations

from torch import nn

from eas.adapters.attach import llama_of
from eas.adapters.blocks import EASBlock


def _unused_adapter_params(model: nn.Module) -> set[int]:
    """Adapters that exist for the search but do not run under the current skip set."""
    unused = set()
    for block in (b for b in llama_of(model).layers if isinstance(b, EASBlock)):
        active = block.active_adapters()
        unused |= {id(p) for m in (block.adapter_attn, block.adapter_skip) if m not in active for p in m.parameters()}
    return unused


def trainable_report(model: nn.Module) -> dict:
    """Counts by name: 'adapter' parameters are trainable (LaVIN's rule; minus any frozen on purpose,
    e.g. eas.adapters.attach.freeze_routers), the rest is the frozen base.

    share_of_llm divides by the LLaMA decoder's parameters, the denominator that reproduces the
    paper's percentages; share_of_model divides by every frozen parameter (LLaMA + ViT).
    Works on meta-device models: only shapes are read.
    """
    unused = _unused_adapter_params(model)
    trainable = sum(p.numel() for n, p in model.named_parameters()
                    if "adapter" in n and p.requires_grad and id(p) not in unused)
    frozen = sum(p.numel() for n, p in model.named_parameters() if "adapter" not in n)
    llm = sum(p.numel() for n, p in llama_of(model).named_parameters() if "adapter" not in n)
    return {"trainable": trainable, "frozen": frozen, "llm": llm,
            "share_of_llm": trainable / llm, "share_of_model": trainable / frozen}
