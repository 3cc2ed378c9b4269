"""What several test files share: error measures and small random set-ups."""
from __future__ import annotations

import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (Frobenius), in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()
