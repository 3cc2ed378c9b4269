"""The AID study behind docs/RESULTS.md: adapter baseline vs EAS vs random skip sets of the same size.

    python benchmarks/aid_study.py --out docs/RESULTS.md [--skip 2 4] [--data-root AID/] [--resume]

Runs `run.py tune` (in process) for: --skip 0 (LaVIN-style adapters only); for each K, EAS with K
searched attentions and --random random skip sets of size K (uniform, seeded), each fine-tuned
exactly like the searched set. Every run lands in runs/study/<name>/ with its own report; this
script only collects their test accuracies. Without --data-root the data are SYNTHETIC and the
page says so.
"""
from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eas.errors import RunFolderError, UsageError, exit_status  # noqa: E402
from eas.io.files import read_json, write_text_atomic  # noqa: E402
from eas.tune.config import TuneConfig  # noqa: E402
from eas.tune.pipeline import tune  # noqa: E402


def run(name: str, runs: Path, resume: bool, **settings) -> dict:
    out = runs / name
    if (out / "report.json").is_file() and resume:
        report = read_json(out / "report.json", "report", RunFolderError)
        wanted = {**settings, "skip_set": list(settings["skip_set"]) if settings.get("skip_set") else None}
        stale = {k: (report["config"].get(k), v) for k, v in wanted.items() if report["config"].get(k) != v}
        if stale:
            raise UsageError(f"{out} was run with other settings {stale} (theirs, wanted): "
                             f"remove it or pass another --runs")
        return report
    print(f"\n=== {name}: {settings}", flush=True)
    return tune(TuneConfig(out=str(out), resume=resume, **settings))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "RESULTS.md")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "study")
    ap.add_argument("--data-root")
    ap.add_argument("--skip", type=int, nargs="+", default=[2],
                    help="K values (default 2 = a quarter of the tiny base's 8 layers)")
    ap.add_argument("--random", type=int, default=3, help="random skip sets per K")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="reuse finished runs, continue interrupted ones")
    args = ap.parse_args(argv)
    return exit_status(study, args)


def study(args) -> None:
    if not args.out.parent.is_dir():
        raise UsageError(f"--out {args.out}: folder {args.out.parent} does not exist")
    common = {"data_root": args.data_root, "seed": args.seed}
    base = run("skip0", args.runs, args.resume, skip=0, **common)
    studies = {}
    for k in args.skip:
        searched = run(f"eas{k}", args.runs, args.resume, skip=k, **common)
        rng = random.Random(f"random-skip-sets:{args.seed}")
        sets = [tuple(sorted(rng.sample(range(base["n_units"]), k))) for _ in range(args.random)]
        randoms = [run(f"random{k}_{i}", args.runs, args.resume, skip_set=s, **common) for i, s in enumerate(sets)]
        studies[k] = (searched, randoms)
    write_page(args, base, studies)


CHANCE = 100 / 30  # 30 AID classes


def _row(name: str, r: dict) -> str:
    a = r["accuracy"]
    return (f"| {name} | {r['skip_layers']} | {a['unmerged']:.2f} | {a['static']:.2f} | {a['dynamic']:.2f} | "
            f"{100 * r['params']['share_of_llm']:.2f} |")


def _rows_and_findings(base: dict, studies: dict) -> tuple[list[str], list[str]]:
    rows = [_row("adapters only (--skip 0)", base)]
    findings = [f"- Adapter baseline vs chance: {base['accuracy']['unmerged']:.2f} % vs {CHANCE:.1f} %."]
    everything = [base]
    for k, (eas, randoms) in studies.items():
        rows.append(_row(f"EAS, searched K={k}", eas))
        rows += [_row(f"random K={k}", r) for r in randoms]
        accs = [r["accuracy"]["unmerged"] for r in randoms]
        findings += [
            f"- K={k}: EAS vs the baseline {eas['accuracy']['unmerged'] - base['accuracy']['unmerged']:+.2f} points; "
            f"searched set {eas['skip_layers']} {eas['accuracy']['unmerged']:.2f} % vs the mean of {len(accs)} random "
            f"sets {statistics.mean(accs):.2f} % ({', '.join(f'{x:.2f}' for x in accs)}, a spread of "
            f"{max(accs) - min(accs):.2f} points); search preferences (high = skippable, layer 0 first) "
            f"`{eas['preferences']}`."]
        everything += [eas, *randoms]
    skipping = [r["accuracy"]["unmerged"] for r in everything[1:]]
    findings.append(f"- Skip sets at or above the no-skip baseline: {sum(a >= base['accuracy']['unmerged'] for a in skipping)} "
                    f"of {len(skipping)}. A difference smaller than the spread between random sets of one size is "
                    "not evidence for or against the search: every fine-tune is paired (same seed, same dropout "
                    "stream), but one seed per set cannot separate sets that differ by less than that.")
    gap = {form: max(abs(r["accuracy"][form] - r["accuracy"]["unmerged"]) for r in everything)
           for form in ("static", "dynamic")}
    findings.append(f"- Merged vs unmerged, largest gap over all runs: static {gap['static']:.2f} points, "
                    f"dynamic {gap['dynamic']:.2f} points.")
    return rows, findings


def write_page(args, base: dict, studies: dict) -> None:
    synthetic, n_units, chance = base["synthetic"], base["n_units"], CHANCE
    rows, findings = _rows_and_findings(base, studies)
    skips = " ".join(str(k) for k in studies)
    cmd = (f"python benchmarks/aid_study.py --out docs/RESULTS.md --skip {skips} --random {args.random}"
           + (f" --data-root {args.data_root}" if args.data_root else ""))
    tag = "SYNTHETIC AID-like data (procedurally drawn scenes, not the real AID)" if synthetic else "AID"
    page = f"""# Results: EAS on {tag}

{"**Every number on this page is on SYNTHETIC data.** " if synthetic else ""}Base: the tiny pretrained LaVIN-style model in
`weights/tiny` ({n_units} decoder layers). Split: the paper's {base['config']['setting']} % setting — {base['split']['train']} train /
{base['split']['val']} val (search reward only) / {base['split']['test']} test images, 30 classes (chance
{chance:.1f} %). Accuracy is exact match of the generated single-word label on the test split,
which neither the search nor the fine-tuning saw.

| run | skipped attentions | unmerged (%) | static merged (%) | dynamic merged (%) | trainable (% of LLM) |
|---|---|---|---|---|---|
{chr(10).join(rows)}

{chr(10).join(findings)}

Produced by

```bash
{cmd}
```

on {platform.machine()} ({platform.processor() or 'CPU'}), one process; each run is `python run.py tune` with
default settings plus `--skip` / `--skip-set` as listed (reports, with per-stage timings, under
`runs/study/`). Accuracy is a function of the seed, not of the machine's load; times are not
compared here (for speed see [BENCHMARKS.md](BENCHMARKS.md)).
"""
    write_text_atomic(args.out, page, RunFolderError)
    print(page)


if __name__ == "__main__":
    sys.exit(main())
