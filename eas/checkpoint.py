"""Strict state-dict loading: every key accounted for, errors name the offending keys."""
from __future__ import annotations

import torch
from torch import nn


class CheckpointError(ValueError):
    pass


def _listing(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str,
                      dtype: torch.dtype | None = None) -> nn.Module:
    """Load ``state`` into ``module`` (possibly built on the meta device) by assignment.

    Missing keys, unexpected keys and shape mismatches raise CheckpointError naming them and
    ``source``. Floating tensors are cast to ``dtype`` (or the module's dtype) one at a time, so
    peak memory stays near one model.
    """
    expected = module.state_dict(keep_vars=True)
    missing = expected.keys() - state.keys()
    unexpected = state.keys() - expected.keys()
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in sorted(expected.keys() & state.keys()) if state[k].shape != expected[k].shape]
    if shapes:
        problems.append("shape mismatch: " + "; ".join(shapes[:8]))
    if problems:
        raise CheckpointError(f"{source}: " + " | ".join(problems))
    cast = {}
    for k, t in state.items():
        target = dtype or expected[k].dtype
        cast[k] = t.to(target) if t.is_floating_point() and expected[k].is_floating_point() else t
    module.load_state_dict(cast, strict=True, assign=True)
    return module
