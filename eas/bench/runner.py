"""Timing: every (backend, variant) session of one cell timed round-robin, medians after warm-up.

A cell is (K, prompt length, generated length, batch). Prefill time is the prompt pass to its first
greedy token; decode time the remaining steps / their number, the sessions' decode steps
interleaved in short chunks. Memory: the bytes of a session's own weights plus the process's peak
resident growth during a run of it alone (Linux VmHWM, reset before the run).
"""
from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from eas.bench import backends as B
from eas.bench.variants import CONTROL, variants, weight_bytes


# The control follows the floor: static merged and the control, each compared with the floor, each
# sit beside it (turn_order gives their predecessors).
TIMING_ORDER = ("base", "static", "floor", CONTROL, "dynamic", "unmerged")
# Decode time each session runs before the next one's turn. Finer is better paired: on this project's
# 2-core VM, tiny eager static/floor ratios per round spread with sd 3.4-4.7 % in 50 ms chunks (11
# steps) and 1.1-1.3 % in chunks of 1-3 steps, the median unchanged (+1.6..+2.3 %, 50 rounds each).
CHUNK_S = 0.01
# Except compiled steps: switching between compiled sessions costs far more than between eager
# ones, for a cause not pinned down (not dynamo's guard cache: each session has its own, see
# eas/bench/backends.py). Tiny, five variants, 25 rounds: in 10 ms chunks (3-4 steps) the compiled
# base decoded 2.91 ms/token against 1.81 ms running its steps whole, and static merged read 0.97x
# the base; in 50 ms chunks (an earlier run) 1.66 against 1.50 ms, static merged 1.10x.
CHUNK_S_COMPILED = 0.05


@dataclass
class Cell:
    k: int
    prompt: int
    generated: int
    batch: int


@dataclass
class Timing:
    backend: str
    kind: str
    prefill_s: list = field(default_factory=list)
    decode_s: list = field(default_factory=list)
    transient_bytes: int = 0
    weight_bytes: int = 0
    kv_bytes: int = 0
    note: str = ""

    def row(self) -> dict:
        return {"backend": self.backend, "kind": self.kind, "prefill_s": statistics.median(self.prefill_s),
                "decode_s": statistics.median(self.decode_s), "prefill_rounds": list(self.prefill_s),
                "decode_rounds": list(self.decode_s),
                "peak_bytes": self.weight_bytes + self.transient_bytes,
                "weight_bytes": self.weight_bytes, "kv_bytes": self.kv_bytes, "note": self.note,
                "rounds": len(self.decode_s)}


def proc_status(key: str, pid: int | str = "self") -> int | None:
    """Bytes of a /proc/<pid>/status memory line (VmRSS:, VmHWM:); None where there is none."""
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak() -> int | None:
    """Reset the process's peak resident size; returns the current resident size (None: not Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return proc_status("VmRSS:")


def run_once(session, tokens: np.ndarray, generated: int, measure_memory: bool) -> tuple[float, float, int]:
    before = _reset_peak() if measure_memory else None
    t0 = time.perf_counter()
    first = session.prefill(tokens, tokens.shape[1] + generated)
    t1 = time.perf_counter()
    if generated > 1:
        session.decode(first, generated - 1)
    t2 = time.perf_counter()
    peak = proc_status("VmHWM:") if before is not None else None
    return t1 - t0, (t2 - t1) / max(1, generated - 1), (peak - before) if peak is not None else 0


def turn_order(keys: list, r: int) -> list:
    """Round r's order of one group's sessions: rotated by r, backwards in odd rounds, and static
    merged and the floor trading places in every other pair of rounds. The order is a cycle (decode
    chunks go round it), so rotating alone never changes who follows whom: static merged always
    followed the base (forwards) or the floor (backwards), the floor always static or dynamic.
    With the trade, over 4 rounds each of the two follows the base once, the A/A control (or
    dynamic) once and the other twice; the control follows the floor once, static once and the
    session after it in TIMING_ORDER twice."""
    keys = list(keys)
    kinds = [kind for _, kind in keys]
    if r % 4 >= 2 and "static" in kinds and "floor" in kinds:
        i, j = kinds.index("static"), kinds.index("floor")
        keys[i], keys[j] = keys[j], keys[i]
    turn = keys[r % len(keys):] + keys[:r % len(keys)]
    return turn[::-1] if r % 2 else turn


def _timed_round(sessions: dict, turn: list, tokens: np.ndarray, steps: int, chunk: int, timings: dict) -> None:
    """Each session of `turn` prefills, then their decode steps interleave `chunk` steps at a time."""
    token, spent = {}, dict.fromkeys(turn, 0.0)
    for key in turn:
        t0 = time.perf_counter()
        token[key] = sessions[key].prefill(tokens, tokens.shape[1] + steps + 1)
        timings[key].prefill_s.append(time.perf_counter() - t0)
    for start in range(0, steps, chunk):
        for key in turn:
            t0 = time.perf_counter()
            token[key] = sessions[key].decode(token[key], min(chunk, steps - start))
            spent[key] += time.perf_counter() - t0
    for key in turn:
        timings[key].decode_s.append(spent[key] / max(1, steps))


def time_cell(sessions: dict, cell: Cell, rounds: int, vocab: int, tick=lambda n=1: None,
              alone: bool = False) -> list[dict]:
    """A warm-up round (each session alone, discarded; it sizes the chunks), `rounds` timed rounds,
    then one untimed round of each session alone for its memory. In a timed round each backend's
    sessions prefill in turn, then their decode steps interleave in chunks of about CHUNK_S
    seconds, so a slow spell of the machine reaches every variant alike; the turn order rotates
    and runs backwards every other round, so no variant always follows the same one. Backends
    take turns whole (their order rotating and reversing alike): interleaved with another runtime,
    a session would share the cores with that runtime's still-spinning worker threads.
    alone: every session takes its turn whole, as one deployed model runs (its weights warm in
    the caches, its runtime's threads its own), the turns still rotating and reversing by round."""
    gen = np.random.default_rng(cell.prompt * 7919 + cell.batch)
    tokens = gen.integers(3, vocab, size=(cell.batch, cell.prompt), dtype=np.int64)
    timings = {key: Timing(*key) for key in sessions}
    # static merged and the floor, whose gap is the finest thing measured, run back to back
    backends = list(dict.fromkeys(backend for backend, _ in sessions))
    order = sorted(sessions, key=lambda key: (backends.index(key[0]), TIMING_ORDER.index(key[1])))
    step_s = {}
    for key in order:
        step_s[key] = run_once(sessions[key], tokens, cell.generated, False)[1]
        tick()
    steps = cell.generated - 1
    groups = {key: [key] for key in order} if alone else {b: [key for key in order if key[0] == b] for b in backends}
    chunks = {g: steps if alone else max(1, int((CHUNK_S_COMPILED if g == "compile" else CHUNK_S)
                                                / max(min(step_s[key] for key in mine), 1e-6)))
              for g, mine in groups.items()}
    turns = list(groups)
    for r in range(rounds):
        seq = turns[r % len(turns):] + turns[:r % len(turns)]
        for g in seq[::-1] if r % 2 else seq:
            mine = groups[g]
            _timed_round(sessions, turn_order(mine, r), tokens, steps, chunks[g], timings)
            tick(len(mine))
    for key in order:
        timings[key].transient_bytes = run_once(sessions[key], tokens, cell.generated, True)[2]
        tick()
    for key, t in timings.items():
        t.kv_bytes = sessions[key].kv_bytes()
        model = getattr(sessions[key], "model", None)
        t.weight_bytes = weight_bytes(model) if model is not None else getattr(sessions[key], "weights", 0)
        t.note = f"logits vs ours {sessions[key].error:.1e}" if hasattr(sessions[key], "error") else ""
    return [t.row() for t in timings.values()]


def build_sessions(base, k: int, kinds, backends, slots: int, threads: int, cache: dict,
                   shared: B.SharedWeights | None = None) -> tuple[dict, list[str]]:
    """{(backend, kind): session} for EAS-K; base sessions are reused across K (cache), and ONNX
    Runtime sessions hold the weights they share once (`shared`), but for the A/A control, whose
    point is storage of its own (a pool of its own: `shared` keys tensors by content)."""
    models = variants(base, k, kinds)
    sessions, skipped = {}, []
    for backend in backends:
        for kind, model in models.items():
            if backend.startswith("llama.cpp") and kind != "base":
                continue
            key = (backend, kind)
            if kind == "base" and key in cache:
                sessions[key] = cache[key]
                continue
            if backend.startswith("ort") and kind == "unmerged":
                skipped.append(f"{backend}/unmerged: the export takes merged models (export/onnx_export.py)")
                continue
            pool = B.SharedWeights(shared.prepack if shared else True) if kind == CONTROL else shared
            sessions[key] = B.session(backend, model, slots, threads, pool)
            if kind == "base":
                cache[key] = sessions[key]
        gc.collect()
    return sessions, skipped
