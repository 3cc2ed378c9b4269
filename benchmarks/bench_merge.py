"""Prefill and decode latency of base, EAS unmerged, static/dynamic merged, and the floor.

Every variant is timed round-robin in one run (shared machines are noisy), and each median is
reported as a ratio to the base model next to the ideal ratio from a FLOPs model.

    python benchmarks/bench_merge.py [--size bench bench-1024] [--skip 2] [--out docs/BENCHMARKS.md]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eas.model.config import LlamaConfig  # noqa: E402
from eas.adapters.attach import EASConfig, add_adapters  # noqa: E402
from eas.model.llama import Llama  # noqa: E402
from eas.adapters.calibrate import calibrate_routes, clear_routes  # noqa: E402
from eas.adapters.merge import delete_attention, merge  # noqa: E402
from eas.adapters.pia import PIA  # noqa: E402

SIZES = {"bench": dict(dim=512, n_layers=8, n_heads=8, vocab_size=4000, multiple_of=64, max_seq_len=512),
         "bench-1024": dict(dim=1024, n_layers=8, n_heads=16, vocab_size=4000, multiple_of=64, max_seq_len=512)}


def decode_flops(cfg: LlamaConfig, past: int, skipped: int, r_a=0, r_s=0, kind="base") -> float:
    """Multiply-adds x2 of one decode token (matmuls only; norms and activations ignored)."""
    qkv = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
    attn = cfg.dim * (qkv + cfg.n_heads * cfg.head_dim) + 2 * past * cfg.n_heads * cfg.head_dim
    ffn = 3 * cfg.dim * cfg.hidden_dim
    kept = cfg.n_layers - skipped
    total = cfg.n_layers * ffn + cfg.dim * cfg.vocab_size
    total += (cfg.n_layers if kind == "base" else kept) * attn
    if kind == "unmerged":
        total += kept * 2 * cfg.dim * r_a + skipped * 2 * cfg.dim * r_s
    if kind == "dynamic":
        total += kept * (cfg.dim * r_a + qkv * 2 * r_a) + skipped * (cfg.dim * r_s + 2 * cfg.hidden_dim * 2 * r_s)
    return 2.0 * total


@torch.inference_mode()
def time_variants(models: dict, prompt_len: int, decode_steps: int, rounds: int, gen) -> dict:
    cfg = next(iter(models.values())).cfg
    tokens = torch.randint(1, cfg.vocab_size, (1, prompt_len), generator=gen)
    positions = torch.arange(prompt_len)[None]
    visible = torch.ones(1, prompt_len, dtype=torch.bool)
    times = {name: {"prefill": [], "decode": []} for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            state = model.new_state(1, prompt_len + decode_steps)
            t0 = time.perf_counter()
            logits, state = model.prefill(model.tok_embeddings(tokens), positions, visible, state)
            t1 = time.perf_counter()
            tok, pos = logits.argmax(-1), positions[:, -1]
            for _ in range(decode_steps):
                pos = pos + 1
                logits, state = model.decode_step(tok, pos, state)
                tok = logits.argmax(-1)
            t2 = time.perf_counter()
            times[name]["prefill"].append(t1 - t0)
            times[name]["decode"].append((t2 - t1) / decode_steps)
    return {n: {k: statistics.median(v) for k, v in d.items()} for n, d in times.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", nargs="+", default=["bench", "bench-1024"], choices=sorted(SIZES))
    ap.add_argument("--skip", type=int, default=2, help="attentions skipped (default: a quarter)")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--decode-steps", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, help="write the markdown report here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cmd = "python benchmarks/bench_merge.py " + " ".join(argv if argv is not None else sys.argv[1:])
    sections = [bench_size(args, size) for size in args.size]
    report = "\n\n".join(sections + [f"Command: `{cmd.strip()}`"])
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# Benchmarks\n\n## Merge: latency of merged vs unmerged EAS (CPU)\n\n" + READING
                            + "\n\n" + report + "\n")


READING = """\
Every variant is timed round-robin in one run, and each ratio is to the base model of the same run;
the last column is the ratio a FLOPs count predicts (matmuls only). The *floor* is the base model
with the same attentions simply deleted and no adapters: what skipping could cost at best.
`static` merged should sit on the floor (its only extras are q/k/v biases and, in each skipped
layer, a per-example W1/W3 bias computed at prefill); `dynamic` pays a rank-2r product per merged
matrix; unmerged adapters pay their own small matmuls and, at these tiny widths, mostly the
dispatch cost of a dozen extra small ops per layer, which is why the measured ratios sit above the
FLOPs ratios and why the gaps shrink at the wider model."""


def bench_size(args, size: str) -> str:
    gen = torch.Generator().manual_seed(0)
    cfg = LlamaConfig(**SIZES[size])
    if not 0 < args.skip < cfg.n_layers:
        raise SystemExit(f"error: --skip {args.skip}: choose 1..{cfg.n_layers - 1} for --size {size}")
    skip = tuple(range(1, cfg.n_layers, max(1, cfg.n_layers // args.skip)))[: args.skip]
    base = Llama(cfg).init_weights(gen).eval()
    eas_cfg = EASConfig(adapter_dim=8, skip_dim=32, skip_layers=skip)
    eas = add_adapters(Llama(cfg).eval(), eas_cfg)
    _copy_base(eas, base)
    for m in eas.modules():
        if isinstance(m, PIA):
            for p in m.parameters():
                p.data = torch.randn(p.shape, generator=gen) * 0.02
    eas.eval()
    dynamic = merge(eas, "dynamic")
    calib = torch.randint(1, cfg.vocab_size, (4, 32), generator=gen)
    vis = torch.ones(4, 32, dtype=torch.bool)
    calibrate_routes(eas, [(eas.tok_embeddings(calib), torch.arange(32).expand(4, 32), vis, vis)])
    static = merge(eas, "static")
    clear_routes(eas)  # the unmerged model routes per example, as it trains
    models = {"base": base, f"EAS-{args.skip} unmerged": eas, f"EAS-{args.skip} static merged": static,
              f"EAS-{args.skip} dynamic merged": dynamic, f"floor ({args.skip} attentions deleted)": delete_attention(base, skip)}
    res = time_variants(models, args.prompt_len, args.decode_steps, args.rounds, gen)
    past = args.prompt_len + args.decode_steps // 2
    kinds = ["base", "unmerged", "static", "dynamic", "floor"]
    ideal = {n: decode_flops(cfg, past, 0 if k == "base" else len(skip), 8, 32, k) for n, k in zip(models, kinds)}
    b = res["base"]
    lines = [f"### LLaMA dim {cfg.dim}, {cfg.n_layers} layers (`--size {size}`)", "",
             f"Random weights, vocab {cfg.vocab_size}; skipped attention layers {list(skip)}; batch 1, prompt "
             f"{args.prompt_len}, {args.decode_steps} decode steps; {args.threads} CPU threads, "
             f"{platform.processor() or platform.machine()}; median of {args.rounds} round-robin rounds.", "",
             "| variant | prefill ms | decode ms/token | prefill ratio | decode ratio | ideal decode ratio (FLOPs) |",
             "|---|---|---|---|---|---|"]
    for name, r in res.items():
        lines.append(f"| {name} | {r['prefill'] * 1e3:.2f} | {r['decode'] * 1e3:.3f} | {r['prefill'] / b['prefill']:.3f} "
                     f"| {r['decode'] / b['decode']:.3f} | {ideal[name] / ideal['base']:.3f} |")
    static, floor = res[f"EAS-{args.skip} static merged"], res[f"floor ({args.skip} attentions deleted)"]
    gaps = {k: static[k] / floor[k] - 1 for k in ("prefill", "decode")}
    lines += [""] + [f"- static merged vs floor, {k}: {g * 100:+.1f} % (target: within 3 %: "
                     f"{'met' if abs(g) <= 0.03 else 'NOT met'})" for k, g in gaps.items()]
    return "\n".join(lines)


def _copy_base(eas: Llama, base: Llama) -> None:
    """Give the adapter model the base weights (its adapter keys keep their own values)."""
    own = eas.state_dict()
    own.update(base.state_dict())
    eas.load_state_dict(own)


if __name__ == "__main__":
    main()
