"""The tuning report: report.json (everything), report.md (for people), preferences.png (the search)."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def write_report(report: dict, out: Path) -> None:
    out = Path(out)
    if report["trajectories"]:
        plot_trajectories(report["trajectories"], report["skip_layers"], out / "preferences.png")
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out / "report.md").write_text(markdown(report), encoding="utf-8")


def _pct(x) -> str:
    """A percentage to two places; n/a for an empty category (scorers give None there)."""
    return "n/a" if x is None else f"{x:.2f}"


def _breakdown(r: dict) -> dict[str, dict[str, dict]]:
    """form -> the scorer's breakdown ({name: {"percent", "n"}}), empty for reports without one."""
    return {form: res.get("breakdown") or {} for form, res in r["results"].items()}


def summary_lines(r: dict) -> list[str]:
    """The one-screen summary printed at the end of `run.py tune`."""
    tag = " [SYNTHETIC DATA]" if r["synthetic"] else ""
    acc = r["accuracy"]
    p = r["params"]
    lines = [f"EAS tuning of {r['task']}{tag}: test accuracy on {r['split']['test']} held-out examples",
             f"  unmerged {_pct(acc['unmerged'])} %   static merged {_pct(acc['static'])} %   "
             f"dynamic merged {_pct(acc['dynamic'])} %",
             f"  skipped {r['unit']} units: {r['skip_layers']} ({len(r['skip_layers'])} of {r['n_units']}; "
             f"KV cache {100 * r['kv_cache_share']:.0f} % of the base)",
             f"  trainable parameters: {p['trainable']:,} = {100 * p['share_of_llm']:.2f} % of the LLM, "
             f"{100 * p['share_of_model']:.2f} % of LLM + ViT",
             f"  time: " + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in r["timings_s"].items())]
    parts = _breakdown(r).get("unmerged") or {}
    if 0 < len(parts) <= 12:
        lines.append("  unmerged by part (%): " + ", ".join(f"{k} {_pct(v['percent'])} (n={v['n']})"
                                                         for k, v in parts.items()))
    elif parts:
        lines.append(f"  breakdown over {len(parts)} parts: report.md")
    if r["skipped_files"]:
        lines.append(f"  WARNING: {len(r['skipped_files'])} unreadable image(s) skipped (listed in report.json)")
    if r.get("skipped_batches"):
        lines.append(f"  WARNING: {len(r['skipped_batches'])} batch(es) with no readable image skipped "
                     f"(listed in report.json)")
    lines.append(f"  merged model ({r['merged']['mode']}): {r['merged']['path']}")
    return lines


def markdown(r: dict) -> str:
    synthetic = ("\n**All numbers are on SYNTHETIC data** (procedurally drawn AID-like scenes, not the real AID "
                 "data set).\n" if r["synthetic"] else "")
    rows = "\n".join(f"| {name} | {_pct(res['accuracy'])} | {res['n']} | {res['seconds']:.1f} |"
                     for name, res in r["results"].items())
    metric = next(iter(r["results"].values())).get("metric")
    metric = f"\nAccuracy: {metric}.\n" if metric else ""
    forms = _breakdown(r)
    names = list(next(iter(forms.values()), {}))
    breakdown = ""
    if names:
        first = next(iter(forms.values()))
        table = "\n".join(f"| {k} | {first[k]['n']} | " + " | ".join(_pct(b.get(k, {}).get("percent"))
                                                                    for b in forms.values()) + " |"
                          for k in names)
        breakdown = (f"\n## Breakdown (%)\n\n| part | examples | {' | '.join(forms)} |\n"
                     f"|---|---|{'---|' * len(forms)}\n{table}\n")
    skipped = ""
    if r.get("skipped_batches"):
        skipped = (f"\n**{len(r['skipped_batches'])} batch(es) skipped**, none of their images readable:\n\n"
                   + "\n".join(f"- {b}" for b in r["skipped_batches"]) + "\n")
    p = r["params"]
    search = ""
    if r["searched"]:
        order = r["importance_order"]
        search = (f"\n## Search\n\nFinal preferences (high = more skippable), layer 0 first:\n`{r['preferences']}`\n\n"
                  f"Most important to most skippable: `{order}`\n\n![preference trajectories](preferences.png)\n")
    constants = r["router_constants"] or []
    kept = ("holds no adapter modules" if r["unit"] == "attention" else
            f"keeps PIA-S's rank-r Δ in place of each skipped {r['unit']}: nothing linear follows it to fold into")
    return f"""# EAS tuning report: {r['task']}{' (synthetic)' if r['synthetic'] else ''}
{synthetic}
Data: `{r['data']}` — {r['split']['train']} train / {r['split']['val']} val (search reward) /
{r['split']['test']} test (never seen by search or tuning).

Skipped {r['unit']} units: `{r['skip_layers']}` ({len(r['skip_layers'])} of {r['n_units']}); the KV cache
holds {100 * r['kv_cache_share']:.0f} % of the base model's.

| form | accuracy (%) | examples | seconds |
|---|---|---|---|
{rows}
{metric}{breakdown}{skipped}

Trainable parameters: {p['trainable']:,} ({100 * p['share_of_llm']:.3f} % of the LLM's {p['llm']:,};
{100 * p['share_of_model']:.3f} % of LLM + ViT).

`merged.pt` ({r['merged']['mode']} merge) {kept}; {len(constants)} router constants
(each adapter's mean route over training examples, listed in report.json) were folded into it.
{search}
Timings (s): {r['timings_s']}

Configuration: `{json.dumps(r['config'])}`
"""


def plot_trajectories(traj: list[list[float]], highlight, path: Path, size=(720, 420)) -> None:
    """One line per unit: its preference after each bandit update; the chosen units drawn thick."""
    W, H = size
    left, right, top, bottom = 60, 110, 30, 40
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    n_steps, n_units = len(traj), len(traj[0])
    lo = min(min(row) for row in traj)
    hi = max(max(row) for row in traj)
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1

    def xy(t, v):
        x = left + (W - left - right) * t / max(1, n_steps - 1)
        y = top + (H - top - bottom) * (hi - v) / (hi - lo)
        return x, y

    d.rectangle([left, top, W - right, H - bottom], outline="black")
    for v in (lo, (lo + hi) / 2, hi):
        d.text((4, xy(0, v)[1] - 6), f"{v:+.3f}", fill="black")
    d.text((left, H - bottom + 8), "0", fill="black")
    d.text((W - right - 40, H - bottom + 8), f"{n_steps - 1} updates", fill="black")
    d.text((left, 8), "bandit preference s per layer (high = skippable); chosen layers thick", fill="black")
    for u in range(n_units):
        colour = PALETTE[u % len(PALETTE)]
        pts = [xy(t, traj[t][u]) for t in range(n_steps)]
        d.line(pts, fill=colour, width=3 if u in highlight else 1)
        x, y = pts[-1]
        d.text((W - right + 6, min(max(y - 6, top), H - bottom - 10)), f"L{u}{' *' if u in highlight else ''}",
               fill=colour)
    img.save(path)
