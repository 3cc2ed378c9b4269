"""Router constants for the static merge: each adapter's mean routing over calibration data."""
from __future__ import annotations

import torch
from torch import nn

from eas.adapters.pia import PIA


@torch.no_grad()
def calibrate_routes(model: nn.Module, batches, forward=None) -> list[list[float]]:
    """Set every adapter that runs to its mean routing over calibration batches (static merge).

    forward(model, batch) runs one batch; the default takes (embeds, positions, key_mask,
    prompt_mask) tuples for a Llama. Returns the constants in module order.
    """
    if forward is None:
        def forward(m, b):
            m.hidden(b[0], b[1], b[2], prompt_mask=b[3])
    pias = [m for m in model.modules() if isinstance(m, PIA)]
    sums, counts = {}, {}

    def record(module, args):
        route = args[1].route.float()
        sums[module] = sums.get(module, 0) + route.sum(0)
        counts[module] = counts.get(module, 0) + route.shape[0]

    for pia in pias:
        pia.fixed_route = None
    hooks = [pia.register_forward_pre_hook(record) for pia in pias]
    try:
        for batch in batches:
            forward(model, batch)
    finally:
        for h in hooks:
            h.remove()
    if not sums:
        raise ValueError("calibrate_routes saw no adapter run: no batches, or no adapters in the model")
    for pia in sums:
        pia.fixed_route = sums[pia] / counts[pia]
    return [pia.fixed_route.tolist() for pia in pias if pia in sums]


def clear_routes(model: nn.Module) -> None:
    """Back to per-example routing (undo calibrate_routes)."""
    for pia in model.modules():
        if isinstance(pia, PIA):
            pia.fixed_route = None
