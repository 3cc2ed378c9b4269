"""`python run.py bench`: measured EAS speed-up beside the ideal one, per backend (docs/BENCHMARKS.md).

Flags are all checked before any model is built. Missing optional backends (llama.cpp) are
skipped with the reason printed and written to the page.
"""
from __future__ import annotations

import platform
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from eas.bench import cost, report
from eas.bench.backends import BACKENDS
from eas.bench.runner import Cell, build_sessions, time_cell
from eas.bench.variants import ADAPTERS, SIZES, base_model, bench_config, skip_layers
from eas.errors import UsageError
from eas.io.files import write_text_atomic

PAGE_HEAD = """# Benchmarks

Regenerate a section with the command printed in it (`--out docs/BENCHMARKS.md` replaces that
size's section only). All models have RANDOM (SYNTHETIC) weights: speed does not depend on values.

How to read: every variant of a section's cell is timed round-robin in one run, one warm-up round
discarded, medians over the rounds. Speed-ups are to the base model on the same backend, printed as
"measured / ideal": the ideal comes from the analytic cost model (`eas/bench/cost.py`): FLOPs for
prefill, bytes moved (weights + K/V) for decode. *floor* = base with the same attentions deleted
and no adapters. Peak MB = the session's own weights (graph files for ONNX Runtime, which holds
one copy per graph; the GGUF file for llama.cpp) plus the process's peak resident growth during
its run. KV-cache MB: measured from the state tensors (eager, compile: preallocated for prompt +
generated slots; ONNX Runtime: the present tensors after the run; llama.cpp: slots filled).
Not measured here: TensorRT engines need a GPU (`export/trt_runtime.py`; none on this machine);
the C++ ONNX Runtime app (`export/cpp`) is not timed by this command; `torch.compile` with CUDA
graphs runs only on a GPU (`--backends compile` there). ONNX Runtime at 7B width is not measured:
each exported graph (embed, prefill, decode) carries its own copy of the weights, about 8 GB per
variant at 4 layers, over this machine's 10 GB per-process budget."""


def add_parser(sub) -> None:
    b = sub.add_parser("bench", help="prefill/decode speed of base, EAS-K unmerged/merged and the floor per backend")
    b.add_argument("--size", default="tiny", help=f"model shape: one of {sorted(SIZES)} (default tiny)")
    b.add_argument("--layers", type=int, help="number of layers (default: the size's own; 7b-width: 4)")
    b.add_argument("--skip", type=int, nargs="+", default=[0, 2, 4], help="K values; K=0 is the base alone")
    b.add_argument("--prompt", type=int, nargs="+", default=[128], help="prompt lengths")
    b.add_argument("--generate", type=int, nargs="+", default=[64], help="generated lengths (>= 2)")
    b.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes")
    b.add_argument("--backends", nargs="+", default=["eager", "ort"], help=f"any of {list(BACKENDS)}")
    b.add_argument("--variants", nargs="+", default=list(cost.KINDS), help=f"any of {list(cost.KINDS)}")
    b.add_argument("--rounds", type=int, default=3, help="timed rounds after one warm-up round")
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--device", default="cpu", help="cpu or cuda: where the PyTorch backends run (compile: "
                   "CUDA graphs there); ONNX Runtime and llama.cpp run on the CPU")
    b.add_argument("--profile", action="store_true", help="add where the base model's decode time goes "
                   "(torch.profiler; ONNX Runtime's profiler with --backends ort)")
    b.add_argument("--out", type=Path, help="markdown page whose section for this size is (re)written")


def check(size, layers, skip, prompt, generate, batch, backends, variants, rounds, threads, out):
    cfg = bench_config(size, layers)
    for k in skip:
        skip_layers(cfg.n_layers, k)
    for flag, values, low in (("--prompt", prompt, 1), ("--generate", generate, 2), ("--batch", batch, 1),
                              ("--rounds", [rounds], 1), ("--threads", [threads], 1)):
        bad = [v for v in values if v < low]
        if bad:
            raise UsageError(f"{flag} {bad[0]}: expected at least {low}")
    if max(prompt) + max(generate) > 2 * cfg.max_seq_len:
        raise UsageError(f"--prompt {max(prompt)} + --generate {max(generate)} exceeds the {2 * cfg.max_seq_len} "
                         f"positions of --size {size}")
    for flag, values, known in (("--backends", backends, BACKENDS), ("--variants", variants, cost.KINDS)):
        bad = [v for v in values if v not in known]
        if bad:
            raise UsageError(f"{flag} {bad[0]!r}: expected any of {list(known)}")
    if "base" not in variants:
        raise UsageError("--variants must include base (every ratio is to it)")
    if out is not None and (out.suffix != ".md" or out.is_dir()):
        raise UsageError(f"--out {out}: expected a markdown (.md) file")
    return cfg


def available(backends: list[str]) -> tuple[list[str], list[str]]:
    from eas.bench.llamacpp import missing
    keep, reasons = [], []
    for b in backends:
        why = missing() if b.startswith("llama.cpp") else None
        if b == "ort":
            try:
                import onnxruntime  # noqa: F401
            except ImportError:
                why = "ort skipped: onnxruntime is not installed"
        keep += [] if why else [b]
        reasons += [why] if why else []
    return keep, reasons


def bench(size="tiny", layers=None, skip=(0, 2, 4), prompt=(128,), generate=(64,), batch=(1,), backends=("eager", "ort"),
          variants=cost.KINDS, rounds=3, threads=2, out=None, profile=False, device="cpu", argv=None) -> list[dict]:
    cfg = check(size, layers, skip, prompt, generate, batch, backends, variants, rounds, threads, out)
    if device not in ("cpu", "cuda") or (device == "cuda" and not torch.cuda.is_available()):
        raise UsageError(f"--device {device}: expected cpu, or cuda on a machine with a GPU")
    torch.set_num_threads(threads)
    backends, notes = available(list(backends))
    for n in notes:
        print(n, file=sys.stderr)
    base = base_model(cfg).to(device)
    cells = [Cell(k, p, g, b) for k in skip for p in prompt for g in generate for b in batch]
    slots = max(prompt) + max(generate)
    cache, rows = {}, []
    bar = tqdm(total=0, desc=f"bench {size}", unit="run")  # grows as each K's sessions are built
    for k in sorted(set(skip)):
        sessions = None  # the previous K's models go before the next ones are built
        sessions, skipped = build_sessions(base, k, variants, backends, slots, threads, cache)
        notes += [s for s in skipped if s not in notes]
        for cell in [c for c in cells if c.k == k]:
            use = {key: s for key, s in sessions.items() if cell.batch == 1 or not key[0].startswith("llama.cpp")}
            bar.total += len(use) * (rounds + 1)
            bar.refresh()
            for r in time_cell(use, cell, rounds, cfg.vocab_size, bar.update):
                rows.append({**r, "k": k, "prompt": cell.prompt, "generated": cell.generated, "batch": cell.batch})
    bar.close()
    section = render(cfg, size, rows, notes, argv, out)
    if profile:
        section += "\n" + "\n".join(profiles(base, cells[0], backends, threads))
    print(section)
    if out is not None:
        page = out.read_text() if out.exists() else PAGE_HEAD + "\n"
        write_text_atomic(out, report.replace_section(page, size, section))
    return rows


def render(cfg, size: str, rows: list[dict], notes: list[str], argv, out) -> str:
    cmd = "python run.py bench " + " ".join(argv if argv is not None else sys.argv[2:])
    lines = [f"## `{size}`: dim {cfg.dim}, {cfg.n_layers} layers, {cfg.n_heads} heads ({cfg.n_kv_heads} K/V), "
             f"FFN {cfg.hidden_dim}, vocab {cfg.vocab_size}", "", f"Command: `{cmd.strip()}`", "",
             f"Machine: {machine()}; {torch.get_num_threads()} threads; fp32. Adapters r_a={ADAPTERS.adapter_dim}, "
             f"r_s={ADAPTERS.skip_dim}. {len(rows[0:1]) and rows[0]['rounds']} timed rounds.", ""]
    lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    for cell in dict.fromkeys((r["prompt"], r["generated"], r["batch"]) for r in rows):
        sub = [r for r in rows if (r["prompt"], r["generated"], r["batch"]) == cell]
        lines += [f"### prompt {cell[0]}, {cell[1]} generated, batch {cell[2]}", ""]
        lines += report.cell_table(cfg, sub) + ["", "Checks:", ""] + report.checks(cfg, sub) + [""]
    if out is not None:
        png = out.parent / "bench" / f"{size}.png"
        first = [r for r in rows if (r["prompt"], r["generated"], r["batch"]) == (rows[0]["prompt"],
                 rows[0]["generated"], rows[0]["batch"])]
        report.plot(cfg, first, png, f"{size}: prompt {rows[0]['prompt']}, {rows[0]['generated']} generated")
        lines += [f"![decode ms/token vs K, {size}](bench/{size}.png)", ""]
    return "\n".join(lines)


def profiles(base, cell: Cell, backends, threads: int) -> list[str]:
    """Top operators of 16 decode steps of the base model after the first cell's prompt."""
    import numpy as np
    from eas.bench import profile
    from eas.bench.backends import Eager
    tokens = np.random.default_rng(0).integers(3, base.cfg.vocab_size, (cell.batch, cell.prompt))
    lines = [f"### Where base decode time goes (16 steps after a {cell.prompt}-token prompt, batch {cell.batch})", ""]
    lines += profile.table("PyTorch eager (torch.profiler, self CPU time):",
                           profile.torch_ops(Eager(base, cell.prompt + 17), tokens, 16))
    if "ort" in backends:
        lines += profile.table("ONNX Runtime (its profiler, kernel time by operator type):",
                               profile.ort_ops(base, tokens, 16, threads))
    return lines


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import os
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__}"
