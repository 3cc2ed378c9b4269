"""The AID study behind docs/RESULTS.md: does the search find the right attentions?

    python benchmarks/aid_study.py --out docs/RESULTS.md --seeds 3 [--skip 2] [--random 2] [--resume]
                                   [--max-runs N] [--data-root AID/]

Arms, each over seeds 0..N-1 (the seed draws the split, the adapters, the dropout and the search):
  skip0    no skipping, LaVIN-style adapters only;
  pm       the same, adapters widened (--adapter-dim) to about the trainable count of EAS with K;
  eas      EAS: search K attentions (with --oracle), fine-tune them;
  randomJ  the J-th uniformly random K-set of the seed, fine-tuned exactly like the searched set;
  oracle   the greedy oracle K-set of the seed's searched super-network, fine-tuned the same way;
  llava    EAS on the LLaVA-style wiring of the same base (--arch llava: patch tokens, projector);
  llava0   the LLaVA-style wiring, no skipping.
A fine-tune depends on (seed, skip set) alone (tests/tune/test_tune.py), so a set equal to one
already fine-tuned for that seed reuses that run. Plus a linear-probe ceiling per seed.

Runs go in arm-major order (every seed of one arm before the next; the cheap probe second), so a
study cut short still has whole arms. --max-runs N stops after N new runs and writes the page from what has
finished (marked PARTIAL), so each run can be its own short job under the machine's lock:
    for i in $(seq 30); do flock /tmp/eas-heavy.lock python benchmarks/aid_study.py --seeds 3 --resume --max-runs 1; done
Without --data-root the data are SYNTHETIC and the page says so.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eas.errors import RunFolderError, UsageError, exit_status  # noqa: E402
from eas.io.files import read_json, write_text_atomic  # noqa: E402
from eas.tune.config import TINY, TuneConfig  # noqa: E402
from eas.tune.pipeline import tune  # noqa: E402

from benchmarks.aid_page import write_page  # noqa: E402
from benchmarks.aid_params import matched_adapter_dim  # noqa: E402
from benchmarks.aid_probe import probe_seed  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "RESULTS.md")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "study")
    ap.add_argument("--data-root")
    ap.add_argument("--skip", type=int, default=2, help="K (default 2 = a quarter of the tiny base's 8 layers)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 for every arm")
    ap.add_argument("--random", type=int, default=2, help="random K-sets per seed")
    ap.add_argument("--max-runs", type=int, help="stop after this many new runs (the page marks what is missing)")
    ap.add_argument("--resume", action="store_true", help="reuse finished runs, continue interrupted ones")
    args = ap.parse_args(argv)
    return exit_status(study, args)


def study(args) -> None:
    if not args.out.parent.is_dir():
        raise UsageError(f"--out {args.out}: folder {args.out.parent} does not exist")
    for flag in ("skip", "seeds"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag} {getattr(args, flag)}: expected a number >= 1")
    if args.random < 0 or (args.max_runs is not None and args.max_runs < 0):
        raise UsageError("--random and --max-runs must be >= 0")
    runner = Runner(args)
    steps = (["eas", "probe", "random0", "oracle", "skip0", "pm"] + [f"random{j}" for j in range(1, args.random)]
             + ["llava", "llava0"])
    for step in steps if args.random else [a for a in steps if a != "random0"]:
        for seed in range(args.seeds):
            runner.probe(seed) if step == "probe" else runner.arm(step, seed)
    write_page(args, runner.results, runner.probes, runner.missing)


class Runner:
    def __init__(self, args):
        self.args, self.new = args, 0
        self.results: dict[tuple[str, int], dict] = {}   # (arm, seed) -> report
        self.probes: dict[int, dict] = {}
        self.missing: list[str] = []
        self.pm_dim: int | None = None

    def arm(self, arm: str, seed: int) -> None:
        k, common = self.args.skip, {"data_root": self.args.data_root, "seed": seed}
        if arm == "eas":
            spec = ("eas", {"skip": k, "oracle": True, **common})
        elif arm == "skip0":
            spec = ("skip0", {"skip": 0, **common})
        elif arm == "pm":
            spec = self._param_matched(seed, common)
        elif arm in ("llava", "llava0"):
            spec = (arm, {"arch": "llava", "skip": k if arm == "llava" else 0, **common})
        else:
            skip_set = self._set_of(arm, seed)
            if skip_set is None:
                self.missing.append(f"{arm} seed {seed} (needs eas seed {seed})")
                return
            searched = self.results.get(("eas", seed))
            if searched is not None and tuple(searched["skip_layers"]) == skip_set:
                self.results[(arm, seed)] = searched
                return
            spec = ("set" + "-".join(map(str, skip_set)), {"skip_set": skip_set, **common})
        report = self._run(seed, *spec)
        if report is not None:
            self.results[(arm, seed)] = report
        else:
            self.missing.append(f"{arm} seed {seed}")

    def _set_of(self, arm: str, seed: int) -> tuple[int, ...] | None:
        if arm == "oracle":
            eas = self.results.get(("eas", seed))
            return None if eas is None else tuple(sorted(eas["oracle"]["oracle_set"]))
        j = int(arm[len("random"):])
        rng = random.Random(f"random-skip-sets:{seed}")
        sets = [tuple(sorted(rng.sample(range(self.n_units), self.args.skip))) for _ in range(j + 1)]
        return sets[j]

    @property
    def n_units(self) -> int:
        return read_json(Path(TINY) / "config.json", "base config", RunFolderError)["llama"]["n_layers"]

    def _param_matched(self, seed: int, common: dict) -> tuple[str, dict]:
        if self.pm_dim is None:
            self.pm_dim = matched_adapter_dim(TINY, self.args.skip)["adapter_dim"]
        return f"pm{self.pm_dim}", {"skip": 0, "adapter_dim": self.pm_dim, **common}

    def _run(self, seed: int, name: str, settings: dict) -> dict | None:
        out = self.args.runs / f"s{seed}" / name
        if (out / "report.json").is_file() and self.args.resume:
            report = read_json(out / "report.json", "report", RunFolderError)
            wanted = {**settings, "skip_set": list(settings["skip_set"]) if settings.get("skip_set") else None}
            stale = {k: (report["config"].get(k), v) for k, v in wanted.items() if report["config"].get(k) != v}
            if stale:
                raise UsageError(f"{out} was run with other settings {stale} (theirs, wanted): "
                                 f"remove it or pass another --runs")
            return report
        if self.args.max_runs is not None and self.new >= self.args.max_runs:
            return None
        self.new += 1
        print(f"\n=== seed {seed} {name}: {settings}", flush=True)
        return tune(TuneConfig(out=str(out), resume=self.args.resume, **settings))

    def probe(self, seed: int) -> None:
        path = self.args.runs / f"s{seed}" / "probe.json"
        if path.is_file() and self.args.resume:
            self.probes[seed] = read_json(path, "probe result", RunFolderError)
            return
        if self.args.max_runs is not None and self.new >= self.args.max_runs:
            self.missing.append(f"probe seed {seed}")
            return
        self.new += 1
        self.probes[seed] = probe_seed(seed, self.args.data_root)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(self.probes[seed], indent=1) + "\n", RunFolderError)


if __name__ == "__main__":
    sys.exit(main())
