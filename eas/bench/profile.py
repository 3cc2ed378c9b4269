"""Where decode time goes: torch.profiler for the PyTorch paths, ONNX Runtime's own profiler for ORT.

Each returns the top operators of `steps` decode steps of a session already prefilled, as
(operator, share of the time, ms per step) rows.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np


def torch_ops(session, tokens: np.ndarray, steps: int, top: int = 6) -> list[tuple[str, float, float]]:
    from torch.profiler import profile
    first = session.prefill(tokens, tokens.shape[1] + steps + 1)
    with profile() as prof:
        session.decode(first, steps)
    events = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(t for _, t in events)
    return [(k, t / total, t / steps / 1e3) for k, t in sorted(events, key=lambda e: -e[1])[:top]]


def ort_ops(model, tokens: np.ndarray, steps: int, threads: int, top: int = 6) -> list[tuple[str, float, float]]:
    """A fresh ORT session with profiling on; its JSON trace summed by operator type."""
    from eas.bench.backends import Ort
    session = Ort(model, threads, profile=True)
    session.decode(session.prefill(tokens, tokens.shape[1] + steps + 1), steps)  # the decode graph runs only here
    decode = session.sessions["decode"]
    path = Path(decode.end_profiling())
    ops = Counter()
    for e in json.loads(path.read_text()):
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            ops[e["args"]["op_name"]] += e["dur"]
    for name, s in session.sessions.items():
        if name != "decode":
            Path(s.end_profiling()).unlink(missing_ok=True)
    path.unlink(missing_ok=True)
    total = sum(ops.values()) or 1
    return [(k, t / total, t / steps / 1e3) for k, t in ops.most_common(top)]


def table(title: str, rows: list[tuple[str, float, float]]) -> list[str]:
    lines = [f"{title}", "", "| operator | share of time | ms per step |", "|---|---|---|"]
    return lines + [f"| `{k}` | {share * 100:.1f} % | {ms:.3f} |" for k, share, ms in rows] + [""]
