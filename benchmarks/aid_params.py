"""The parameter-matched baseline's adapter width: the no-skip adapters widened to EAS's trainable count."""
from __future__ import annotations

from pathlib import Path

from eas.adapters.attach import EASConfig, add_adapters, freeze_routers, mark_trainable, set_skipped
from eas.adapters.params import trainable_report
from eas.io.checkpoint import load_model
from eas.tune.config import arch_defaults

LAVIN = arch_defaults("lavin", 0)  # LaVIN-style widths do not depend on the LLM's width


def trainable(base: Path, adapter_dim: int, skip: tuple[int, ...]) -> int:
    """Trainable parameters `run.py tune` reports (adapters in use; routers frozen by the static
    merge) for a LaVIN base with PIA-A width adapter_dim; counted on the meta device (shapes only)."""
    model = load_model(base, device="meta")
    add_adapters(model, EASConfig(adapter_dim=adapter_dim, skip_dim=LAVIN["skip_dim"]))
    mark_trainable(model)
    freeze_routers(model)
    set_skipped(model.llama, skip)
    return trainable_report(model)["trainable"]


def matched_adapter_dim(base: Path, k: int) -> dict:
    """The even PIA-A width (its up projection has 2 groups) whose no-skip count is nearest EAS's with
    K skipped attentions (which K does not matter for the count). Widening r_a widens the ViT's
    adapters too: the match is in total trainable parameters, not per module."""
    r_a = LAVIN["adapter_dim"]
    target = trainable(base, r_a, tuple(range(k)))
    best = min(range(2, 8 * r_a + 1, 2), key=lambda r: abs(trainable(base, r, ()) - target))
    return {"adapter_dim": best, "trainable": trainable(base, best, ()), "eas_trainable": target,
            "default_trainable": trainable(base, r_a, ())}
