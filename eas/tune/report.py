"""The tuning report: report.json (everything), report.md (for people), preferences.png (the search)."""
from __future__ import annotations

import json

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


# How far one seed is from "the" result (docs/RESULTS.md measures the spread over seeds).
SEED_CAVEAT = ("one seed on one machine; the same command on another CPU can differ by several points "
               "(30.54 % vs 26.92 % seen for the default job), so compare mean ± sd over seeds "
               "(benchmarks/aid_study.py --seeds N), not single runs")


def write_report(report: dict, folder) -> None:
    """Into a RunFolder (eas/tune/run_folder.py): every file written atomically."""
    if report["trajectories"]:
        folder.write("preferences.png", lambda f: plot_trajectories(report["trajectories"], report["skip_layers"], f))
    folder.write_text("report.json", json.dumps(report, indent=1) + "\n")
    folder.write_text("report.md", markdown(report))


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
             f"  unmerged {_pct(acc['unmerged'])} %   static merged "
             f"{_pct(acc['static']) + ' %' if 'static' in acc else 'refused (report.md)'}   "
             f"dynamic merged {_pct(acc['dynamic'])} %",
             f"  skipped {r['unit']} units: {r['skip_layers']} ({len(r['skip_layers'])} of {r['n_units']}; "
             f"KV cache {100 * r['kv_cache_share']:.0f} % of the base)",
             f"  trainable parameters: {p['trainable']:,} = {100 * p['share_of_llm']:.2f} % of the LLM, "
             f"{100 * p['share_of_model']:.2f} % of LLM + ViT",
             f"  {r['defaults']}",
             "  time: " + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in r["timings_s"].items())]
    parts = _breakdown(r).get("unmerged") or {}
    if 0 < len(parts) <= 12:
        lines.append("  unmerged by part (%): " + ", ".join(f"{k} {_pct(v['percent'])} (n={v['n']})"
                                                         for k, v in parts.items()))
    elif parts:
        lines.append(f"  breakdown over {len(parts)} parts: report.md")
    if r["warnings"]:
        lines.append(f"  WARNING: {len(r['warnings'])} data warning(s), e.g. stray files (listed in report.md)")
    if r["skipped_files"]:
        lines.append(f"  WARNING: {len(r['skipped_files'])} unreadable image(s) skipped (listed in report.md)")
    if r["skipped_batches"]:
        lines.append(f"  WARNING: {len(r['skipped_batches'])} batch(es) with no readable image skipped "
                     f"(listed in report.md)")
    lines.append(f"  merged model ({r['merged']['mode']}): {r['merged']['path']}")
    if r.get("oracle"):
        lines.append(f"  {oracle_line(r['oracle'])}")
    lines += [f"  {r['recipe']}", f"  NOTE: {SEED_CAVEAT}"]
    return lines


def oracle_line(o: dict) -> str:
    return (f"oracle (super-network, skip-one validation loss): greedy set {o['oracle_set']}, searched "
            f"{o['searched_set']}, overlap {o['vs_val']['overlap']}/{o['vs_val']['k']}; Spearman rho of the "
            f"bandit's preferences vs the oracle: {o['vs_val']['spearman']:+.2f} (val loss), "
            f"{o['vs_test_loss']['spearman']:+.2f} (test loss), {o['vs_test_accuracy']['spearman']:+.2f} "
            f"(test accuracy on {o['test_examples']} examples)")


def markdown(r: dict) -> str:
    synthetic = ("\n**All numbers are on SYNTHETIC data** (procedurally drawn AID-like scenes, not the real AID "
                 "data set).\n" if r["synthetic"] else "")
    rows = "\n".join(f"| {name} | {_pct(res['accuracy'])} | {res['n']} | {res['seconds']:.1f} |"
                     for name, res in r["results"].items())
    metric = next(iter(r["results"].values())).get("metric")
    metric = f"\nAccuracy: {metric}.\n" if metric else ""
    p = r["params"]
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
{metric}{_refused_line(r)}{_breakdown_section(r)}{_skipped_section(r)}

Trainable parameters: {p['trainable']:,} ({100 * p['share_of_llm']:.3f} % of the LLM's {p['llm']:,};
{100 * p['share_of_model']:.3f} % of LLM + ViT); {r['defaults']}.

`merged.pt` ({r['merged']['mode']} merge) {kept}; {len(constants)} router constants
(each adapter's mean route over training examples, listed in report.json) were folded into it.
{_search_section(r)}
Timings (s): {r['timings_s']}

Schedule: {r['recipe']}.
{chr(10) + oracle_line(r['oracle']) + " (oracle.json)." + chr(10) if r.get('oracle') else ""}
Note: {SEED_CAVEAT}.

Configuration: `{json.dumps(r['config'])}`
"""


def _refused_line(r: dict) -> str:
    refused = r.get("static_refused")
    return f"\nNo static merged form: {refused}.\n" if refused else ""


def _breakdown_section(r: dict) -> str:
    forms = _breakdown(r)
    first = next(iter(forms.values()), {})
    if not first:
        return ""
    table = "\n".join(f"| {k} | {first[k]['n']} | " + " | ".join(_pct(b.get(k, {}).get("percent"))
                                                                for b in forms.values()) + " |"
                      for k in first)
    return (f"\n## Breakdown (%)\n\n| part | examples | {' | '.join(forms)} |\n"
            f"|---|---|{'---|' * len(forms)}\n{table}\n")


def _skipped_section(r: dict) -> str:
    """Everything the run passed over, so that a missing file or a vanished class is seen."""
    parts = [(r["warnings"], "data warning(s)", "entries the data loader passed over"),
             (r["skipped_files"], "unreadable image(s) skipped", "their examples were left out"),
             (r["skipped_batches"], "batch(es) skipped", "none of their images readable")]
    return "".join(f"\n**{len(items)} {what}**, {why}:\n\n" + "\n".join(f"- {x}" for x in items) + "\n"
                   for items, what, why in parts if items)


def _search_section(r: dict) -> str:
    if not r["searched"]:
        return ""
    return (f"\n## Search\n\nFinal preferences (high = more skippable), layer 0 first:\n`{r['preferences']}`\n\n"
            f"Most important to most skippable: `{r['importance_order']}`\n\n"
            f"![preference trajectories](preferences.png)\n")


def plot_trajectories(traj: list[list[float]], highlight, file) -> None:
    """One line per unit: its preference after each bandit update; the chosen units drawn thick.
    file: a path or a binary file object."""
    fig = Figure(figsize=(7.2, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for u in range(len(traj[0])):
        chosen = u in highlight
        ax.plot([row[u] for row in traj], linewidth=2.5 if chosen else 1, label=f"L{u}{' *' if chosen else ''}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("bandit update")
    ax.set_ylabel("preference s (high = skippable)")
    ax.set_title("bandit preference per layer; chosen layers (*) thick")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    fig.tight_layout()
    fig.savefig(file, format="png")
