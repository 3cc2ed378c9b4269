"""The benchmark's page: tables with every measured ratio beside its ideal, checks, and a plot.

Each model size owns one section of the page between markers, so one size can be re-measured
without touching the others; the command that produced a section is printed in it.
"""
from __future__ import annotations

import itertools
import math
import re
import statistics
from pathlib import Path

from eas.bench import cost
from eas.bench.variants import ADAPTERS, CONTROL

OURS = ("eager", "compile", "ort", "ort-cpp")
LABEL = {"base": "base", "unmerged": "EAS-K unmerged", "static": "EAS-K static merged",
         "dynamic": "EAS-K dynamic merged", "floor": "floor (K attentions deleted)",
         CONTROL: "A/A control (a 2nd copy of the floor)"}
WITHIN = (0.97, 1.03)  # static merged vs the floor: the adapters cost nothing once merged


def _find(rows, **want):
    return next((r for r in rows if all(r[k] == v for k, v in want.items())), None)


def ratio_text(measured: float, ideal: float) -> str:
    return f"{measured:.3f} / {ideal:.3f}"


def paired(a: dict, b: dict) -> tuple[float, float, float, float]:
    """a's decode time over b's, round by round (the two ran in the same round of the round-robin,
    so a slow spell of the machine hits both): (median, low, high, confidence), where [low, high]
    is the distribution-free interval for the median from the sorted ratios' order statistics (the
    binomial rule), at the confidence it reaches, 95 % or the nearest above (every ratio below 6 rounds)."""
    ratios = sorted(x / y for x, y in zip(a.get("decode_rounds", [a["decode_s"]]),
                                          b.get("decode_rounds", [b["decode_s"]])))
    n = len(ratios)
    # P(at most i of the n ratios fall below the true median), i = 0..n
    tail = list(itertools.accumulate(math.comb(n, i) / 2 ** n for i in range(n + 1)))
    j = 0  # ratios cut from each end: [sorted[j], sorted[n-1-j]] misses the median w.p. 2 * tail[j]
    while j + 1 < n - 2 - j and tail[j + 1] <= 0.025:
        j += 1
    return statistics.median(ratios), ratios[j], ratios[n - 1 - j], 1 - 2 * tail[j]


def verdict(low: float, high: float, bar: tuple[float, float], conf: float) -> str:
    """met where the whole interval [low, high] lies within bar = (least, most), NOT met where
    none of it does, else not settled by this run's noise; never settled by an interval of less
    than 90 % confidence (fewer than 5 rounds)."""
    if conf < 0.9:
        return f"not settled: {conf * 100:.0f} % is too little confidence (5 rounds give 94 %)"
    if bar[0] <= low and high <= bar[1]:
        return "met"
    if high < bar[0] or low > bar[1]:
        return "NOT met"
    return "not settled: the interval straddles the bar"


def cell_table(cfg, rows: list[dict]) -> list[str]:
    lines = ["| K | variant | backend | prefill tok/s | decode ms/token | prefill speed-up measured / ideal "
             "| decode speed-up measured / ideal | peak MB | KV-cache MB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = _find(rows, backend=r["backend"], kind="base", k=r["k"])  # timed in the same round-robin
        ideal = cost.ideal_speedup(cfg, "floor" if r["kind"] == CONTROL else r["kind"], r["k"], r["prompt"],
                                   r["generated"], r["batch"], ADAPTERS)
        tok_s = r["batch"] * r["prompt"] / r["prefill_s"]
        pre = dec = "—"
        if base is not None and r["kind"] != "base":
            pre = ratio_text(base["prefill_s"] / r["prefill_s"], ideal["prefill"])
            dec = ratio_text(base["decode_s"] / r["decode_s"], ideal["decode"])
        note = f" ({r['note']})" if r["note"] else ""
        lines.append(f"| {r['k']} | {LABEL[r['kind']]} | {r['backend']}{note} | {tok_s:,.0f} | "
                     f"{r['decode_s'] * 1e3:.3f} | {pre} | {dec} | {r['peak_bytes'] / 2**20:,.0f} | "
                     f"{r['kv_bytes'] / 2**20:.2f} |")
    return lines


def checks(cfg, rows: list[dict], ort_bar: bool = False) -> list[str]:
    """The issue's "must show" points that these rows can answer, with their numbers: met / NOT met
    where the interval of the paired ratios agrees, "not settled" where it straddles the bar.
    ort_bar: judge ONNX Runtime against ">= 2x eager" (the issue's bar for the tiny model)."""
    out = []
    L = cfg.n_layers
    for r in rows:
        if r["kind"] == "static":
            floor = _find(rows, backend=r["backend"], kind="floor", k=r["k"])
            base = _find(rows, backend=r["backend"], kind="base", k=r["k"])
            if floor:
                out += _vs_floor(r, floor, _find(rows, backend=r["backend"], kind=CONTROL, k=r["k"]))
            if base:
                ideal = cost.ideal_speedup(cfg, "static", r["k"], r["prompt"], r["generated"], r["batch"], ADAPTERS)
                speedup, lo, hi, conf = paired(base, r)
                share = [(x - 1) / (ideal["decode"] - 1) for x in (speedup, lo, hi)]
                out.append(f"- {r['backend']}, K={r['k']}: static decode speed-up {speedup:.3f}"
                           f" of ideal {ideal['decode']:.3f}: {share[0] * 100:.0f} % of the ideal saving "
                           f"({conf * 100:.0f} % interval {share[1] * 100:.0f} to {share[2] * 100:.0f} %; >= 90 %: "
                           f"{verdict(share[1], share[2], (0.9, math.inf), conf)})")
        if r["backend"] == "eager" and r["kind"] not in ("base", "unmerged"):
            base = _find(rows, backend="eager", kind="base")
            if base and base["kv_bytes"]:
                exact = r["kv_bytes"] * L == base["kv_bytes"] * (L - r["k"])
                out.append(f"- KV cache, {r['kind']} K={r['k']}: {r['kv_bytes']:,} of {base['kv_bytes']:,} bytes "
                           f"= {r['kv_bytes'] / base['kv_bytes']:.4f}, (L-K)/L = {(L - r['k']) / L:.4f} "
                           f"({'exact' if exact else 'NOT exact'})")
    for k in sorted({r["k"] for r in rows}):
        eager, ort = _find(rows, backend="eager", kind="base", k=k), _find(rows, backend="ort", kind="base", k=k)
        if eager and ort:
            x, lo, hi, conf = paired(eager, ort)
            bar = f"; >= 2x: {verdict(lo, hi, (2.0, math.inf), conf)}" if ort_bar else ""
            out.append(f"- K={k} cell: ONNX Runtime base decode {x:.2f}x faster than eager ({ort['decode_s'] * 1e3:.2f} "
                       f"vs {eager['decode_s'] * 1e3:.2f} ms; {_interval(lo, hi, conf)}{bar})")
    return out


def _vs_floor(static: dict, floor: dict, control: dict | None) -> list[str]:
    """Static merged against the floor, and the A/A control (a second copy of the floor) against it:
    where two identical models do not read within the bar, this cell cannot tell static merged's
    cost from where each copy's weights happen to lie, in either direction: not settled."""
    said, line = _gap("static merged", static, floor)
    if control is None:
        return [line + said + ")"]
    aa_said, aa_line = _gap("A/A control", control, floor)
    if aa_said != "met" and not said.startswith("not settled"):
        said = f"not settled: the A/A control below is not met itself (alone this would read {said})"
    return [line + said + ")", aa_line + aa_said + ")"]


def _gap(name: str, r: dict, floor: dict) -> tuple[str, str]:
    """(verdict within 3 %, the check's line up to it) for r's decode time against the floor's."""
    gap, lo, hi, conf = paired(r, floor)
    return verdict(lo, hi, WITHIN, conf), (
        f"- {r['backend']}, K={r['k']}: {name} decode vs floor {(gap - 1) * 100:+.1f} % ({conf * 100:.0f} % "
        f"interval {(lo - 1) * 100:+.1f} to {(hi - 1) * 100:+.1f} % over {len(r.get('decode_rounds', [0]))} "
        f"rounds; within 3 %: ")


def _interval(lo: float, hi: float, conf: float) -> str:
    return f"{conf * 100:.0f} % interval {lo:.2f}-{hi:.2f}x"


def against(rows: list[dict]) -> list[str]:
    """Our best base decode against llama.cpp's base, and our best static merged EAS-K against it,
    per K: time ratios paired by round, as the other checks."""
    out = []
    for k in sorted({r["k"] for r in rows}):
        mine = [r for r in rows if r["k"] == k]
        best = {kind: min([r for r in mine if r["backend"] in OURS and r["kind"] == kind],
                          key=lambda r: r["decode_s"], default=None) for kind in ("base", "static")}
        for ref in [r for r in mine if r["backend"].startswith("llama.cpp")]:
            if best["base"]:
                x, lo, hi, conf = paired(best["base"], ref)
                out.append(f"- K={k} cell: base decode, our best ({best['base']['backend']}, "
                           f"{best['base']['decode_s'] * 1e3:.2f} ms) vs {ref['backend']} ({ref['decode_s'] * 1e3:.2f} ms): "
                           f"{x:.2f}x its time ({_interval(lo, hi, conf)}; within 1.2x: {verdict(lo, hi, (0.0, 1.2), conf)})")
            if best["static"]:
                m = best["static"]
                x, lo, hi, conf = paired(m, ref)
                out.append(f"- EAS-{k} static merged ({m['backend']}, {m['decode_s'] * 1e3:.2f} ms) vs {ref['backend']} "
                           f"base ({ref['decode_s'] * 1e3:.2f} ms): {x:.2f}x its time ({_interval(lo, hi, conf)}; "
                           f"beats it: {verdict(lo, hi, (0.0, 1.0 - 1e-9), conf)})")
    return out


def plot(cfg, rows: list[dict], path: Path, title: str) -> None:
    """Decode ms/token vs K per backend: base at K=0, static merged at K>0; dashed: the ideal from base."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8.4, 4.2))
    first = rows[0]
    for backend in dict.fromkeys(r["backend"] for r in rows):
        mine = [r for r in rows if r["backend"] == backend]
        base = _find(mine, kind="base")
        pts = sorted({0: base["decode_s"] * 1e3, **{r["k"]: r["decode_s"] * 1e3 for r in mine if r["kind"] == "static"}}.items())
        if backend.startswith("llama.cpp"):  # a reference level, named in the legend (labels on the axes collide)
            ax.axhline(pts[0][1], ls=":" if backend.endswith("f32") else "-.", lw=1, color="grey",
                       label=f"{backend} base")
            continue
        line, = ax.plot([k for k, _ in pts], [v for _, v in pts], "o-", label=f"{backend} (base, then static merged)")
        ks = [k for k, _ in pts]
        ideal = [base["decode_s"] * 1e3 / cost.ideal_speedup(cfg, "static", k, first["prompt"], first["generated"],
                                                             first["batch"], ADAPTERS)["decode"] if k else
                 base["decode_s"] * 1e3 for k in ks]
        ax.plot(ks, ideal, "--", color=line.get_color(), lw=1, label=f"{backend} ideal")
    ax.set_xlabel("K (attentions skipped)")
    ax.set_ylabel("decode ms/token")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)  # beside, not over, the lines
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def replace_section(page: str, key: str, section: str) -> str:
    """The page with the section between `<!-- bench:key -->` markers replaced (or appended)."""
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    block = f"{start}\n{section.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if pattern.search(page):
        return pattern.sub(lambda _: block, page)
    return page.rstrip() + "\n\n" + block + "\n"
