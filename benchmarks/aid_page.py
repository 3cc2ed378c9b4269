"""docs/RESULTS.md and its oracle plot, from the study's finished runs (benchmarks/aid_study.py)."""
from __future__ import annotations

import platform
import statistics

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from eas.errors import RunFolderError
from eas.io.files import atomic_write, write_text_atomic
from eas.tune.recipes import describe
from eas.tune.report import SEED_CAVEAT

CHANCE = 100 / 30  # 30 AID classes
ARMS = {"skip0": "adapters only (no skip)", "pm": "adapters only, widened (parameter-matched)",
        "eas": "EAS, searched K-set", "oracle": "greedy oracle K-set", "random": "random K-set",
        "llava0": "LLaVA-style, adapters only (no skip)", "llava": "LLaVA-style EAS, searched K-set"}
PAIRS = [("eas", "random"), ("eas", "oracle"), ("oracle", "random"), ("eas", "skip0"), ("pm", "skip0"),
         ("eas", "pm"), ("llava", "eas"), ("llava0", "skip0"), ("llava", "llava0")]
RHO_CRITICAL_N8 = 0.738  # two-sided 5 % critical value of Spearman's rho for n = 8 (exact tables)
PROBES = {"lavin_tokens": "LaVIN image tokens (6 CLS taps after the projector; what LaVIN's LLM reads)",
          "cls_taps": "the 6 CLS taps before the projector",
          "patch_mean": "LLaVA-form: penultimate-block patch tokens, mean-pooled"}


def ms(xs) -> str:
    xs = list(xs)
    if not xs:
        return "n/a"
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{xs[0]:.2f} (one seed)"


def acc(r: dict) -> float:
    return r["accuracy"]["unmerged"]


def per_seed(results: dict, arm: str) -> dict[int, float]:
    """seed -> accuracy; the random arm is the mean over that seed's random sets."""
    if arm != "random":
        return {s: acc(r) for (a, s), r in results.items() if a == arm}
    seeds = sorted({s for (a, s) in results if a.startswith("random")})
    return {s: statistics.mean(acc(r) for (a, t), r in results.items() if a.startswith("random") and t == s)
            for s in seeds}


def arm_rows(results: dict) -> list[str]:
    rows = []
    for arm, label in ARMS.items():
        runs = sorted(((s, a, r) for (a, s), r in results.items() if a == arm or (arm == "random" and
                                                                                    a.startswith("random"))))
        if not runs:
            continue
        values = ", ".join(f"s{s} {r['skip_layers']} {acc(r):.2f}" for s, _, r in runs)
        share = {round(100 * r["params"]["share_of_llm"], 2) for _, _, r in runs}
        trainable = {r["params"]["trainable"] for _, _, r in runs}
        rows.append(f"| {label} | {len({s for s, _, _ in runs})} | {len(runs)} | {ms(acc(r) for _, _, r in runs)} | "
                    f"{values} | {'/'.join(f'{t:,}' for t in sorted(trainable))} ({'/'.join(map(str, sorted(share)))} %) |")
    return rows


def pair_rows(results: dict) -> list[str]:
    rows = []
    for a, b in PAIRS:
        x, y = per_seed(results, a), per_seed(results, b)
        seeds = sorted(set(x) & set(y))
        if not seeds:
            continue
        d = [x[s] - y[s] for s in seeds]
        wins = sum(v > 0 for v in d)
        rows.append(f"| {ARMS[a]} − {ARMS[b]} | {len(seeds)} | {ms(d)} | "
                    f"{', '.join(f'{v:+.2f}' for v in d)} | {wins} of {len(seeds)} |")
    return rows


def set_rank(o: dict, skip_set) -> str:
    every = o.get("all_sets_val_loss")
    if not every:
        return "n/a"
    ranked = [tuple(k) for k, _ in every]
    return f"{ranked.index(tuple(sorted(skip_set))) + 1} of {len(ranked)}"


def oracle_rows(results: dict) -> tuple[list[str], dict[str, list[float]]]:
    rows, rhos = [], {"vs_val": [], "vs_test_loss": [], "vs_test_accuracy": []}
    for (arm, seed), r in sorted(results.items(), key=lambda kv: kv[0][1]):
        o = r.get("oracle") if arm == "eas" else None
        if not o:
            continue
        for key in rhos:
            rhos[key].append(o[key]["spearman"])
        rows.append(f"| {seed} | {o['searched_set']} | {o['oracle_set']} | {o['vs_val']['overlap']}/{o['vs_val']['k']} | "
                    f"{o['vs_val']['spearman']:+.2f} | {o['vs_test_loss']['spearman']:+.2f} | "
                    f"{o['vs_test_accuracy']['spearman']:+.2f} | {set_rank(o, o['searched_set'])} | "
                    f"{set_rank(o, o['oracle_set'])} |")
    return rows, rhos


def plot_oracle(results: dict, path) -> bool:
    """Per layer: the bandit's final preference against the super-network's validation-loss
    increase when that attention alone is skipped; one colour per seed, points labelled by layer."""
    seeds = [(s, r["oracle"]) for (a, s), r in sorted(results.items(), key=lambda kv: kv[0][1])
             if a == "eas" and r.get("oracle")]
    if not seeds:
        return False
    fig = Figure(figsize=(7.2, 4.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for seed, o in seeds:
        rise = [x - o["val_loss_none"] for x in o["val_loss_skip_one"]]
        pts = ax.scatter(o["preferences"], rise, label=f"seed {seed} (rho {o['vs_val']['spearman']:+.2f})")
        for i, (p, y) in enumerate(zip(o["preferences"], rise)):
            ax.annotate(f"L{i}", (p, y), fontsize=7, color=pts.get_facecolor()[0], xytext=(3, 2),
                        textcoords="offset points")
    ax.set_xlabel("bandit preference s (high = skippable)")
    ax.set_ylabel("val loss increase, attention skipped alone")
    ax.set_title("SYNTHETIC AID: search preference vs oracle (super-network)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"), RunFolderError)
    return True


def probe_rows(probes: dict) -> list[str]:
    rows = []
    for kind, label in PROBES.items():
        got = [p[kind] for p in probes.values() if kind in p]
        if got:
            rows.append(f"| {label} | {got[0]['features']:,} | {len(got)} | {ms(g['test_accuracy'] for g in got)} | "
                        f"{ms(g['train_accuracy'] for g in got)} |")
    return rows


def command(args) -> str:
    return (f"python benchmarks/aid_study.py --out docs/RESULTS.md --seeds {args.seeds} --skip {args.skip} "
            f"--random {args.random}" + (f" --data-root {args.data_root}" if args.data_root else ""))


TARGET = 2 * 25.62  # the bar for the default demo: twice the adapter baseline of the one-seed page


def ceiling_line(results: dict, probes: dict) -> str | None:
    """Whether the base can carry the adapter baseline to TARGET: the best probe against it."""
    kinds = {k: [p[k]["test_accuracy"] for p in probes.values() if k in p] for k in PROBES}
    kinds = {k: v for k, v in kinds.items() if v}
    if not kinds:
        return None
    best = max(kinds, key=lambda k: statistics.mean(kinds[k]))
    base = list(per_seed(results, "skip0").values())
    return (f"- Ceiling: the best linear probe on the frozen base's features ({PROBES[best]}) reaches "
            f"{ms(kinds[best])} % on the test images; the adapter baseline reaches {ms(base)} %. Twice the "
            f"one-seed baseline (2 × 25.62 = {TARGET:.1f} %) is "
            + ("above what a linear read-out of the frozen features reaches: the base's image features, more "
               "than the method, bound the demo (not a hard bound: tuning also adapts the ViT's adapters and "
               "the projector)" if statistics.mean(kinds[best]) < TARGET else
               "within what a linear read-out of these features gives") + ".")


def support(results: dict, rhos: dict, probes: dict) -> list[str]:
    """What the numbers can and cannot carry, computed from them."""
    lines = [line for line in [ceiling_line(results, probes)] if line]
    val = rhos["vs_val"]
    if val:
        strong = sum(abs(r) > RHO_CRITICAL_N8 for r in val)
        lines.append(f"- Search vs oracle order: rho (val loss) {ms(val)} over {len(val)} seed(s); {strong} seed(s) "
                     f"beyond ±{RHO_CRITICAL_N8}, the 5 % critical value for 8 layers. A single seed's rho below that "
                     "is indistinguishable from a random order. The val-loss oracle reads the same 60 val images "
                     f"as the bandit's reward; on held-out test images rho is {ms(rhos['vs_test_loss'])}.")
        same = [r["oracle"] for (a, _), r in results.items() if a == "eas" and r.get("oracle")]
        equal = sum(sorted(o["oracle_set"]) == sorted(o["searched_set"]) for o in same)
        lines.append(f"- The greedy oracle K-set equals the searched set on {equal} of {len(same)} seeds; where they "
                     "are equal the oracle arm is the searched arm's own fine-tune (a fine-tune depends on the seed "
                     "and the set alone), so their accuracy difference is 0 by construction, not a measurement.")
    for a, b in PAIRS[:3] + PAIRS[6:]:
        x, y = per_seed(results, a), per_seed(results, b)
        d = [x[s] - y[s] for s in sorted(set(x) & set(y))]
        if len(d) >= 2 and any(d):
            resolved = abs(statistics.mean(d)) > statistics.stdev(d)
            lines.append(f"- {ARMS[a]} vs {ARMS[b]}: {statistics.mean(d):+.2f} points paired over {len(d)} seeds, sd "
                         f"{statistics.stdev(d):.2f}: " + ("larger than the spread between seeds, a difference "
                                                           "worth testing with more seeds" if resolved else
                                                           "within the spread between seeds, not a result"))
    if per_seed(results, "llava"):
        lines.append("- The LLaVA-style wiring trains its projector from scratch on the 600 images, where LaVIN's "
                     "was pretrained with the tiny base, at about the same trainable count; the patch tokens it "
                     "reads are the features with the best linear probe (above), so its gap points at the fresh "
                     "projector and this data budget rather than at the features. On real LLaVA-1.5 the projector comes pretrained.")
    oracles = [r["oracle"] for (a, _), r in results.items() if a == "eas" and r.get("oracle")]
    if oracles:
        top = max(max(o["test_accuracy_skip_one"].values()) for o in oracles)
        lines.append(f"- The super-network itself (before the fine-tune) generates almost no right label: at most "
                     f"{top:.2f} % on the test subset under any single skip, so rho against test accuracy ranks "
                     "mostly ties and carries little; the loss-based rho are the measure.")
    lines.append("- The oracle judges the super-network the search ran on, not the fine-tuned models: a skip set "
                 "the super-network tolerates need not fine-tune best, which the oracle arm's accuracy measures. "
                 "The super-network trained on K = 2 sub-networks, so skip-one scores are slightly off its "
                 "training distribution; the 28-set ranks are on it.")
    return lines


def write_page(args, results: dict, probes: dict, missing: list[str]) -> None:
    rows, rhos = oracle_rows(results)
    plotted = plot_oracle(results, args.out.parent / "aid_oracle.png")
    base = next(iter(results.values()), None)
    split = (f"{base['split']['train']} train / {base['split']['val']} val (search reward only; the fine-tune "
             f"reads train + val) / {base['split']['test']} test images" if base else "n/a")
    recipe = describe(base["config"].get("recipe", "demo"), "lavin", base["config"]) if base else "n/a"
    llava = next((r for (a, _), r in results.items() if a.startswith("llava")), None)
    if llava:
        recipe += (".\n- The LLaVA-style arms use the " + describe(llava["config"].get("recipe", "demo"), "llava",
                                                               llava["config"]) +
                   f"; search {llava['config']['search']}, r_a {llava['config']['adapter_dim']}, "
                   f"r_s {llava['config']['skip_dim']}, {llava['config']['finetune_epochs']:g} fine-tune epochs")
    partial = ("" if not missing else "\n**PARTIAL: the study is not finished.** Missing: " + "; ".join(missing)
               + ". Complete it (each run its own job under the machine's lock) with\n\n```bash\nfor i in $(seq "
               f"{len(missing)}); do flock /tmp/eas-heavy.lock {command(args)} --resume --max-runs 1; done\n```\n")
    page = f"""# Results: does the search find the right attentions? (SYNTHETIC AID-like data)

**Every number on this page is on SYNTHETIC data** (procedurally drawn AID-like scenes, not the
real AID). Base: the tiny pretrained LaVIN-style model in `weights/tiny` (8 decoder layers); K = 2
skipped attentions (L/4). Split per seed (the paper's 20 % setting): {split}, 30 classes
(chance {CHANCE:.1f} %). Accuracy: exact match of the generated label on the whole test split.
Seeds {', '.join(map(str, range(args.seeds)))}: the seed draws the split, the adapters, the dropout
stream and the search; every arm of one seed shares them, so comparisons are paired by seed.
{partial}
## Accuracy by arm (unmerged; the merged forms score the same, see each run's report)

| arm | seeds | runs | accuracy (%) mean ± sd | per run: seed, skip set, accuracy | trainable (% of LLM) |
|---|---|---|---|---|---|
{chr(10).join(arm_rows(results))}

The LLaVA-style arms (`--arch llava`, issue 13) wire the same tiny base the way LLaVA-1.5 does:
the ViT's penultimate-block patch tokens (CLS dropped) through a two-layer GELU projector that
starts untrained and is trained with the adapters, placed at `<image>` in a `vicuna_v1` prompt;
PIA-A/PIA-S in the LLM only, at the width that scales LLaVA-EAS's r = 128 to this LLM (8). The
LaVIN-style arms read 6 CLS taps through a projector pretrained with the tiny base.

The parameter-matched arm widens the PIA-A width r_a from 8 to the even width whose trainable count
is nearest EAS's with K = 2 (r_a is shared with the ViT's adapters, so the match is in the total,
not per module); the table lists both counts.

## Paired by seed (first minus second; random = mean of the seed's random sets)

| comparison | seeds | difference (points) mean ± sd | per seed | first ahead |
|---|---|---|---|---|
{chr(10).join(pair_rows(results))}

## The search against the oracle

For each seed's searched super-network (before the fine-tune), `run.py tune --oracle` skips each
attention alone and measures the loss on the whole val split (what the bandit's reward reads), and
loss and accuracy on every 4th test example (600); the greedy oracle K-set adds, one at a time, the
attention whose extra skip raises the val loss least. rho = Spearman's rank correlation between the
bandit's preferences and the negated oracle loss (+1: the same order). Rank = the set's place among
all C(8, 2) = 28 K-sets by the super-network's val loss (1 = best).

| seed | searched | oracle | overlap | rho (val loss) | rho (test loss) | rho (test acc.) | searched rank | oracle rank |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

rho mean ± sd over seeds: val loss {ms(rhos['vs_val'])}; test loss {ms(rhos['vs_test_loss'])}; test accuracy
{ms(rhos['vs_test_accuracy'])}.
{"" if not plotted else chr(10) + "![search preference vs oracle loss increase](aid_oracle.png)" + chr(10)}
## Ceiling: a linear probe on the frozen base's image features

Multinomial logistic regression (L2 chosen by 5-fold cross-validation on the training images) on the
base's own features, no adapter: trained on train + val (600 images), scored on the 2,400 test images.

| features | dimensions | seeds | test accuracy (%) | train accuracy (%) |
|---|---|---|---|---|
{chr(10).join(probe_rows(probes)) or "| not run yet (see PARTIAL above) | | | | |"}

## What the data can and cannot support

{chr(10).join(support(results, rhos, probes))}

## Reproducibility and recipe

- Determinism: one seed on one machine reproduces bit for bit (tests/tune/test_tune.py), but not
  across machines: the default job gave 30.54 % on one 2-core machine and 26.92 % on another (the
  bandit's preferences differed in the 4th decimal, then the fine-tune diverged). Every run prints the
  caveat ("{SEED_CAVEAT}"). Every number here comes from one machine ({platform.machine()}, CPU).
- Fine-tune data: since this study the fine-tune reads train + val (540 -> 600 images), as the
  paper fine-tunes on its whole training split; the one-seed page before it (seed 0: 30.54 %
  searched [5, 6], 25.62 % adapters only) fine-tuned on train alone.
- Schedule: the LaVIN-style arms use the {recipe}.

Produced by

```bash
{command(args)}
```

(runs and their reports under `runs/study/s<seed>/`; resumable with `--resume`, and `--max-runs 1`
makes each run its own job).
"""
    write_text_atomic(args.out, page, RunFolderError)
    print(page)
