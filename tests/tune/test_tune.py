"""End-to-end tuning (`run.py tune`) on a small random base and a small synthetic AID set."""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from eas.errors import CheckpointError, EASError, RunFolderError, UsageError
from eas.io.checkpoint import save_model
from eas.io.merged import load_merged
from eas.model.config import LavinConfig
from eas.model.lavin import Lavin
from eas.model.tokenizer import Tokenizer
from eas.tune.config import TuneConfig
from eas.tune.pipeline import tune
from eas.tune.train import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / "weights" / "tiny" / "tokenizer.model"
SMALL = dict(synthetic_per_class=4, setting="50", batch_size=8, val_batch=8, warmup_epochs=1, search_epochs=2,
             finetune_epochs=2, nas_every=1, eval_batch_size=32, skip=1)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return random_base(tmp_path_factory.mktemp("base"))


def random_base(out: Path, dtype: torch.dtype = torch.float32) -> Path:
    """A random LaVIN model of the `test` size, saved in the own format next to the tiny tokenizer."""
    tok = Tokenizer(TOKENIZER)
    cfg = LavinConfig.named("test")
    cfg = dataclasses.replace(cfg, llama=dataclasses.replace(cfg.llama, vocab_size=tok.vocab_size))
    save_model(Lavin(cfg).init_weights(torch.Generator().manual_seed(0)).to(dtype), out, tokenizer=TOKENIZER)
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def cli(base, cache, out, *extra, **settings) -> list[str]:
    args = [sys.executable, str(ROOT / "run.py"), "tune", "--base", str(base), "--cache-dir", str(cache),
            "--out", str(out)]
    for k, v in {**SMALL, **settings}.items():
        if v is not None:  # None: leave the flag at its default
            args += [f"--{k.replace('_', '-')}", str(v)]
    return args + list(extra)


def env1() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def test_tiny_end_to_end_tune(base, cache, tmp_path):
    report = tune(TuneConfig(base=str(base), cache_dir=str(cache), out=str(tmp_path / "run"), **SMALL))
    out = tmp_path / "run"
    assert report["synthetic"] and report["task"] == "aid"
    assert len(report["skip_layers"]) == 1 and report["searched"]
    assert report["split"] == {"train": 30, "val": 30, "test": 60}  # 2 train images per class, 1 held out for val
    assert len(report["trajectories"]) == 1 + 6  # initial + an update per bandit-epoch step (3 steps/epoch)
    assert report["kv_cache_share"] == 0.75
    for name in ("report.json", "report.md", "preferences.png", "merged.pt", "adapters.pt", "log.jsonl"):
        assert (out / name).is_file(), name
    assert "SYNTHETIC" in (out / "report.md").read_text()
    from PIL import Image
    with Image.open(out / "preferences.png") as png:
        assert png.format == "PNG" and png.size == (720, 420)
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 60
    # The dynamic merge is exact, so greedy decoding gives the very same answers as the adapters.
    assert [r["dynamic"] for r in rows] == [r["unmerged"] for r in rows]
    # merged.pt is static (default), so tuning fixed every router at (1/2, 1/2) and the static merge is exact too.
    assert [r["static"] for r in rows] == [r["unmerged"] for r in rows]
    assert {tuple(c) for c in report["router_constants"]} == {(0.5, 0.5)}
    adapters = load_checkpoint(out / "adapters.pt")["adapters"]
    assert all("adapter" in k and ".router." not in k for k in adapters), "only trained adapter weights"
    # merged.pt is a plain model: no attention in the skipped layer, and it reproduces the static answers.
    merged = load_merged(out / "merged.pt")
    skipped = report["skip_layers"][0]
    assert merged.llama.layers[skipped].attention is None
    assert not any("adapter_attn" in k or "adapter_skip" in k for k in merged.state_dict())
    tok = Tokenizer(merged.tokenizer_ref)
    from eas.data.tasks import load_pixels
    from eas.data.aid import scan_aid, paper_split
    split = paper_split(scan_aid(report["data"]).examples, "50", seed=0)
    examples, pixels = load_pixels(split.test[:8], merged.cfg.vision.image_size, [])
    batch = merged.build_batch(tok, [(e.prompt, None, True) for e in examples])
    answers = [tok.decode(t) for t in merged.generate(batch, pixels, 10, eos_id=tok.eos_id)]
    assert answers == [r["static"] for r in rows[:8]]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    # the search trains on the 30 train examples (3 steps of 8 per epoch), the fine-tune on train + val (7)
    assert [r["stage"] for r in log].count("search") == 9 and [r["stage"] for r in log].count("finetune") == 14


@pytest.mark.parametrize("unit,kv_share", [("ffn", 1.0), ("layer", 0.75)])
def test_ffn_and_layer_units_tune_end_to_end(unit, kv_share, base, cache, tmp_path):
    """The Table 5 / DAS candidates: searched, fine-tuned and merged like attention, with the
    skipped unit physically absent from merged.pt and the merged forms exact."""
    report = tune(TuneConfig(base=str(base), cache_dir=str(cache), out=str(tmp_path / "r"),
                             **{**SMALL, "unit": unit, "max_test": 12}))
    (skipped,) = report["skip_layers"]
    assert report["unit"] == unit and report["searched"] and report["kv_cache_share"] == kv_share
    assert report["accuracy"]["static"] == report["accuracy"]["unmerged"] == report["accuracy"]["dynamic"]
    block = load_merged(tmp_path / "r" / "merged.pt").llama.layers[skipped]
    assert block.feed_forward is None and block.residual_adapter is not None
    assert (block.attention is None) == (unit == "layer")
    assert f"skipped {unit}" in (tmp_path / "r" / "report.md").read_text()


def test_searched_set_fine_tunes_like_the_same_fixed_set(base, cache, tmp_path):
    """Fine-tuning depends on (seed, skip set) only, so searched-vs-random comparisons are paired:
    the search's draws must not shift the fine-tune's dropout stream."""
    small = {**SMALL, "max_test": 6}
    searched = tune(TuneConfig(base=str(base), cache_dir=str(cache), out=str(tmp_path / "s"), **small))
    fixed = tune(TuneConfig(base=str(base), cache_dir=str(cache), out=str(tmp_path / "f"),
                            **{**small, "skip_set": tuple(searched["skip_layers"])}))
    a = load_checkpoint(tmp_path / "s" / "adapters.pt")["adapters"]
    b = load_checkpoint(tmp_path / "f" / "adapters.pt")["adapters"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not fixed["searched"] and fixed["accuracy"] == searched["accuracy"]


def test_oracle_leaves_the_run_bit_identical_and_judges_its_super_network(base, cache, tmp_path):
    """Two seeded runs in one process reproduce bit for bit, and --oracle (eval mode, no random
    draw) changes nothing the run computes; oracle.json holds the skip-one and greedy results."""
    small = {**SMALL, "skip": 2, "max_test": 6}
    plain = tune(TuneConfig(base=str(base), cache_dir=str(cache), out=str(tmp_path / "p"), **small))
    judged = tune(TuneConfig(base=str(base), cache_dir=str(cache), out=str(tmp_path / "o"), oracle=True, **small))
    a, b = (load_checkpoint(tmp_path / d / "adapters.pt")["adapters"] for d in ("p", "o"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert plain["trajectories"] == judged["trajectories"] and plain["accuracy"] == judged["accuracy"]
    assert (tmp_path / "p" / "predictions.jsonl").read_text() == (tmp_path / "o" / "predictions.jsonl").read_text()
    o = json.loads((tmp_path / "o" / "oracle.json").read_text())
    assert judged["oracle"] == o and plain["oracle"] is None
    assert o["searched_set"] == judged["skip_layers"] and o["preferences"] == pytest.approx(judged["preferences"], abs=1e-6)
    pairs = {tuple(k): v for k, v in o["all_sets_val_loss"]}
    assert len(pairs) == 6  # C(4, 2)
    first = min(range(4), key=lambda i: (o["val_loss_skip_one"][i], i))
    assert first in o["oracle_set"]
    assert o["oracle_path_val_loss"][1] == pytest.approx(min(v for k, v in pairs.items() if first in k), rel=1e-9)
    assert pairs[tuple(o["oracle_set"])] == pytest.approx(o["oracle_path_val_loss"][1], rel=1e-9)
    assert set(o["test_accuracy_skip_one"]) == {"none", "0", "1", "2", "3"} and o["test_examples"] == 15
    assert -1 <= o["vs_val"]["spearman"] <= 1 and o["vs_val"]["k"] == 2
    assert "Spearman rho" in (tmp_path / "o" / "report.md").read_text()


def test_oracle_needs_a_search(base, cache, tmp_path):
    with pytest.raises(UsageError, match="--oracle"):
        tune(TuneConfig(base=str(base), cache_dir=str(cache), out=str(tmp_path / "r"), oracle=True,
                        **{**SMALL, "skip_set": (1,), "skip": None}))


def test_unknown_unit_is_refused(base, cache, tmp_path):
    with pytest.raises(UsageError, match="--unit 'head'"):
        tune(TuneConfig(base=str(base), cache_dir=str(cache), out=str(tmp_path / "r"), **{**SMALL, "unit": "head"}))


def test_a_refused_static_fold_ends_a_static_run_and_not_a_dynamic_one(cache, tmp_path, monkeypatch):
    """Every static fold refused (its gain limit forced below 1): --merge static stops with the fold's
    error and what to do; --merge dynamic scores and writes its own form and says why static is absent.
    The base is stored in float16 and tuned in float32: the folds are bounded for float16 (merged.pt's)."""
    from eas.adapters import pia
    from eas.tune.report import summary_lines
    bounded = []
    monkeypatch.setattr(pia, "fold_limit", lambda dtype: bounded.append(dtype) or 0.5)
    base = random_base(tmp_path / "base16", torch.float16)
    settings = {**SMALL, "skip_set": (1,), "skip": None, "max_test": 8}
    with pytest.raises(UsageError, match=r"PIA-.*amplify it .*tune again with --merge dynamic"):
        tune(TuneConfig(base=str(base), cache_dir=str(cache), out=str(tmp_path / "s"), **settings))
    assert bounded == [torch.float16]  # the first fold refused
    report = tune(TuneConfig(base=str(base), cache_dir=str(cache), out=str(tmp_path / "d"),
                             **{**settings, "merge": "dynamic"}))
    assert set(report["accuracy"]) == {"unmerged", "dynamic"} and "amplify it" in report["static_refused"]
    assert "static merged refused (report.md)" in summary_lines(report)[1]
    assert load_merged(tmp_path / "d" / "merged.pt").merge_info["mode"] == "dynamic"
    assert "No static merged form: static merge of layer" in (tmp_path / "d" / "report.md").read_text()


def test_skip_zero_is_the_adapter_baseline(base, cache, tmp_path):
    report = tune(TuneConfig(base=str(base), cache_dir=str(cache), out=str(tmp_path / "r"),
                             **{**SMALL, "skip": 0, "max_test": 10, "merge": "dynamic"}))
    assert report["skip_layers"] == [] and not report["searched"] and report["kv_cache_share"] == 1.0
    # --merge dynamic trains the routers: they route per example, so their means are no longer 1/2.
    assert report["router_constants"] and all(abs(c[0] - 0.5) > 1e-4 for c in report["router_constants"])
    adapters = load_checkpoint(Path(report["merged"]["path"]).parent / "adapters.pt")["adapters"]
    assert any(".router." in k for k in adapters)


def _search_lines(log: Path) -> int:
    return sum('"search"' in line for line in log.read_text().splitlines()) if log.is_file() else 0


def _start_and_wait(args, log: Path, lines: int) -> subprocess.Popen:
    proc = subprocess.Popen(args, env=env1(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and _search_lines(log) < lines:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    return proc


def test_interrupt_and_kill_then_resume_is_exact(base, cache, tmp_path):
    settings = dict(search_epochs=6, finetune_epochs=1, max_test=4, save_every=3)
    ref = tmp_path / "ref"
    subprocess.run(cli(base, cache, ref, **settings), check=True, env=env1(), capture_output=True)

    run = tmp_path / "run"
    log = run / "log.jsonl"
    # Ctrl-C: the step under way finishes, is checkpointed, and the run stops with a clear message.
    proc = _start_and_wait(cli(base, cache, run, **settings), log, 4)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "--resume" in err and "Traceback" not in err
    saved = load_checkpoint(run / "state.pt")
    assert saved["stage"] == "search" and saved["step"] == _search_lines(log) >= 4

    # kill -9 after resuming: only the steps since the last periodic checkpoint are redone.
    proc = _start_and_wait(cli(base, cache, run, "--resume", **settings), log, saved["step"] + 5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "report.json").exists()
    assert load_checkpoint(run / "state.pt")["step"] > saved["step"]
    done = subprocess.run(cli(base, cache, run, "--resume", **settings), env=env1(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed" in done.stdout

    a, b = (json.loads((d / "report.json").read_text()) for d in (ref, run))
    assert a["preferences"] == b["preferences"] and a["skip_layers"] == b["skip_layers"]
    assert a["trajectories"] == b["trajectories"]
    wa, wb = (load_checkpoint(d / "adapters.pt")["adapters"] for d in (ref, run))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (ref / "predictions.jsonl").read_text() == (run / "predictions.jsonl").read_text()
    # The log holds each step once, as if nothing had happened.
    steps = [(r["stage"], r["step"]) for r in map(json.loads, log.read_text().splitlines()) if "stage" in r]
    assert len(steps) == len(set(steps)) == (1 + 6) * 3 + 7  # (warm-up + search epochs) x 3 steps + fine-tune


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_two_gloo_processes_agree_with_one(base, cache, tmp_path):
    settings = dict(search_epochs=4, finetune_epochs=1, max_test=4, dropout=0.0, skip=2)
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(cli(base, cache, one, **settings), check=True, env=env1(), capture_output=True)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(launcher + cli(base, cache, two, **settings)[1:], env=env1(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = (json.loads((d / "report.json").read_text()) for d in (one, two))
    assert b["world_size"] == 2
    assert a["skip_layers"] == b["skip_layers"]
    assert torch.allclose(torch.tensor(a["trajectories"]), torch.tensor(b["trajectories"]), atol=1e-5)
    la, lb = ([r for r in map(json.loads, (d / "log.jsonl").read_text().splitlines()) if r.get("stage")]
              for d in (one, two))
    assert [r.get("skip") for r in la] == [r.get("skip") for r in lb]  # rank 0's draws, broadcast
    assert [r["loss"] for r in la] == pytest.approx([r["loss"] for r in lb], abs=1e-4)


def test_bad_input_is_named(base, cache, tmp_path):
    def fails(*extra, **settings):
        done = subprocess.run(cli(base, cache, tmp_path / "bad", *extra, **settings), env=env1(),
                              capture_output=True, text=True)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ")
        return last

    assert "does-not-exist" in fails("--data-root", str(tmp_path / "does-not-exist"))
    (tmp_path / "empty").mkdir()
    assert "empty" in fails("--data-root", str(tmp_path / "empty"))
    wrong = tmp_path / "wrongbase"
    wrong.mkdir()
    for f in base.iterdir():
        (wrong / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((wrong / "config.json").read_text())
    cfg["llama"]["dim"] = 96
    (wrong / "config.json").write_text(json.dumps(cfg))
    err = subprocess.run(cli(wrong, cache, tmp_path / "bad2"), env=env1(), capture_output=True, text=True).stderr
    assert "Traceback" not in err and "wrongbase" in err and "attention_norm.weight: checkpoint (64,) vs model (96,)" in err
    assert "--skip 9: expected a number in 0..3" in fails(skip=9)
    assert "--skip-set '1,4': expected layers in 0..3" in fails(skip=None, skip_set="1,4")


def test_corrupt_and_stray_files_are_counted_and_listed(base, cache, tmp_path):
    """Neither stops the run; both are named in report.md, where a vanished class would show."""
    from eas.data.synthetic_aid import write_synthetic_aid
    root = write_synthetic_aid(tmp_path / "aid", per_class=4, size=32)
    (root / "Airport" / "airport_1.jpg").write_bytes(b"not a jpeg")
    (root / "Beach" / "notes.txt").write_text("not an image")
    report = tune(TuneConfig(base=str(base), cache_dir=str(cache), out=str(tmp_path / "r"), data_root=str(root),
                             **{**SMALL, "skip": 0, "finetune_epochs": 1}))
    assert len(report["skipped_files"]) == 1 and "airport_1.jpg" in report["skipped_files"][0]
    assert len(report["warnings"]) == 1 and "notes.txt" in report["warnings"][0]
    md = (tmp_path / "r" / "report.md").read_text()
    assert f"- {report['skipped_files'][0]}" in md and f"- {report['warnings'][0]}" in md


def test_existing_run_needs_resume_and_same_settings(base, cache, tmp_path):
    out = tmp_path / "r"
    tune(TuneConfig(base=str(base), cache_dir=str(cache), out=str(out), **{**SMALL, "skip": 0, "max_test": 4,
                                                                           "finetune_epochs": 1}))
    with pytest.raises(RunFolderError, match="--resume"):
        tune(TuneConfig(base=str(base), cache_dir=str(cache), out=str(out), **{**SMALL, "skip": 0}))
    with pytest.raises(CheckpointError, match="lr=0.004 .now 0.1"):
        tune(TuneConfig(base=str(base), cache_dir=str(cache), out=str(out), resume=True,
                        **{**SMALL, "skip": 0, "max_test": 4, "finetune_epochs": 1, "lr": 0.1}))


# -- ScienceQA and Slake: the tune pipeline on tiny sets in their real on-disk formats ---------------

TASK_SMALL = dict(batch_size=8, val_batch=8, warmup_epochs=1, search_epochs=1, finetune_epochs=2, nas_every=1,
                  eval_batch_size=32, skip=1, max_test=6)


def _scienceqa_set(root: Path) -> Path:
    """8 train / 4 val / 6 test problems mixing subjects, grades, hints (TXT) and images (IMG)."""
    from fixture_data import sqa_problem, write_scienceqa
    subjects = ("natural science", "social science", "language science")
    problems, splits, pid = {}, {}, 0
    for split, n in (("train", 8), ("val", 4), ("test", 6)):
        splits[split] = []
        for i in range(n):
            pid += 1
            problems[str(pid)] = sqa_problem(
                f"Which word comes {i + 1}?", ["one", "two", "three"], i % 3, "Count." if i % 2 else "",
                None if i % 3 == 2 else "image.png", f"grade{1 + 5 * pid % 12}", subjects[i % 3], split=split)
            splits[split].append(str(pid))
    return write_scienceqa(root, problems, splits, size=16)


def _slake_set(root: Path, images: int | None = 3) -> Path:
    """8 train / 4 validate / 6 test English questions (plus a Chinese one the loader drops), sharing
    `images` image files (None: one file per question)."""
    from fixture_data import slake_entry, write_slake
    qa = (("Is this a CT image?", "Yes", "CLOSED"), ("Is the lung healthy?", "No", "CLOSED"),
          ("Which organ is dark?", "Left Lung", "OPEN"), ("What organ is shown?", "Liver", "OPEN"))
    qid, splits = 0, {}
    for split, n in (("train", 8), ("validate", 4), ("test", 6)):
        splits[split] = []
        for i in range(n):
            q, a, kind = qa[(i + qid) % 4]
            splits[split].append(slake_entry(qid, q, a, kind, img=f"xmlab{qid if images is None else qid % images}/source.jpg"))
            qid += 1
    splits["train"].append(slake_entry(qid, "这是什么?", "肝脏", "OPEN", lang="zh"))
    return write_slake(root, splits)


def _check_task_report(report: dict, out: Path, parts: set[str]):
    from eas.tune.report import summary_lines
    assert not report["synthetic"] and report["split"] == {"train": 8, "val": 4, "test": 6}
    assert report["searched"] and len(report["skip_layers"]) == 1
    for form in ("unmerged", "static", "dynamic"):
        assert isinstance(report["accuracy"][form], float), form
        assert report["results"][form]["n"] == 6 and set(report["results"][form]["breakdown"]) == parts
    # Both merges are exact (static: routers fixed at 1/2 while tuning), so the answers are identical.
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    assert [r["static"] for r in rows] == [r["dynamic"] for r in rows] == [r["unmerged"] for r in rows]
    assert report["accuracy"]["static"] == report["accuracy"]["dynamic"] == report["accuracy"]["unmerged"]
    saved = json.loads((out / "report.json").read_text())
    assert saved["accuracy"] == report["accuracy"] and saved["results"]["static"]["breakdown"] == \
        saved["results"]["unmerged"]["breakdown"]
    md = (out / "report.md").read_text()
    assert "## Breakdown" in md and all(f"| {p} |" in md for p in parts)
    assert any("by part" in line for line in summary_lines(report))


def test_scienceqa_end_to_end_tune(base, cache, tmp_path):
    from eas.data.scienceqa import CATEGORIES
    root = _scienceqa_set(tmp_path / "ScienceQA")
    report = tune(TuneConfig(task="scienceqa", data_root=str(root), base=str(base), cache_dir=str(cache),
                             out=str(tmp_path / "run"), **TASK_SMALL))
    assert report["task"] == "scienceqa"
    _check_task_report(report, tmp_path / "run", set(CATEGORIES))
    counts = {k: v["n"] for k, v in report["results"]["unmerged"]["breakdown"].items()}
    assert counts["NAT"] + counts["SOC"] + counts["LAN"] == counts["G1-6"] + counts["G7-12"] == 6
    assert counts["NO"] == 1 and counts["TXT"] == 3 and counts["IMG"] == 4


def test_slake_end_to_end_tune(base, cache, tmp_path):
    root = _slake_set(tmp_path / "Slake")
    report = tune(TuneConfig(task="slake", data_root=str(root), base=str(base), cache_dir=str(cache),
                             out=str(tmp_path / "run"), **TASK_SMALL))
    assert report["task"] == "slake"
    _check_task_report(report, tmp_path / "run", {"closed_hit", "open_hit", "open_exact", "open_f1", "open_bleu1"})
    b = report["results"]["unmerged"]["breakdown"]
    assert b["closed_hit"]["n"] + b["open_hit"]["n"] == 6


def test_batch_without_readable_image_is_skipped_not_fatal(base, cache, tmp_path):
    """A training batch or a bandit validation batch whose every image is unreadable is skipped,
    counted and named, on every rank alike: no update from an empty batch, no 0/0 reward."""
    from eas.data import DataWarning
    from eas.data.slake import load_slake
    from eas.tune.batches import permutation
    root = _slake_set(tmp_path / "Slake", images=None)  # one image file per question
    train, val = load_slake(root, "train"), load_slake(root, "validate")
    pool = train + val  # what the fine-tune reads
    bad_train = [pool[i].image for i in permutation(len(pool), 0, "finetune", 0)[:4]]  # fine-tune step 0
    bad_val = [val[i].image for i in permutation(len(val), 0, "val", 0)[:2]]  # bandit round 0
    for path in bad_train + bad_val:
        path.write_bytes(b"not a jpeg")
    settings = dict(batch_size=4, val_batch=2, warmup_epochs=0, search_epochs=1, finetune_epochs=1, nas_every=1,
                    candidates=2, skip=1, max_test=2)
    with pytest.warns(DataWarning) as caught:
        report = tune(TuneConfig(task="slake", data_root=str(root), base=str(base), cache_dir=str(cache),
                                 out=str(tmp_path / "r"), **settings))
    skipped = report["skipped_batches"]
    assert len(skipped) == 2 and len(report["skipped_files"]) == 6
    assert "bandit round 0 (search step 0)" in skipped[0] and str(bad_val[0]) in skipped[0]
    assert "fine-tune" not in skipped[1] and "finetune step 0" in skipped[1] and str(bad_train[0]) in skipped[1]
    assert sum("skipped the" in str(w.message) for w in caught) == 2
    assert len(report["trajectories"]) == 1 + 1  # round 1 ran, on the next validation batch
    log = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert log[0]["bandit_skipped"] and "candidates" in log[1]
    assert log[2] == {"stage": "finetune", "step": 0, "loss": None, "skipped_batch": True}
    assert log[3]["loss"] is not None and all(r["loss"] is not None for r in log[:2])
    assert "2 batch(es) skipped" in (tmp_path / "r" / "report.md").read_text()


# -- Bad input: a one-line error naming the flag, path or value, before any work; no partial files --

@pytest.mark.parametrize("flag,value,named", [
    ("nas_every", 0, "--nas-every 0"), ("val_batch", 0, "--val-batch 0"), ("accum", 0, "--accum 0"),
    ("candidates", 0, "--candidates 0"), ("eval_batch_size", 0, "--eval-batch-size 0"),
    ("batch_size", 0, "--batch-size 0"), ("lr", "nan", "--lr nan"), ("lr", 0, "--lr 0.0"),
    ("weight_decay", -0.1, "--weight-decay -0.1"), ("finetune_epochs", -1, "--finetune-epochs -1.0"),
    ("search_epochs", "inf", "--search-epochs inf"), ("max_test", 0, "--max-test 0"),
    ("max_test", -5, "--max-test -5"), ("skip_set", ",", "--skip-set '': expected at least one layer"),
    ("skip_set", "1,1", "--skip-set '1,1': expected distinct"), ("merge", "fused", "--merge 'fused'"),
    ("unit", "head", "--unit 'head'"), ("save_minutes", 0, "--save-minutes 0.0"),
    ("device", "tpu", "--device 'tpu'"), ("dtype", "float16", "--dtype 'float16'"),
    ("llama", "somewhere", "--llama needs --clip"), ("task", "slake", "--task slake needs --data-root"),
    ("arch", "gpt", "--arch 'gpt'"), ("adapter_dim", 0, "--adapter-dim 0"),
    ("projector_lr", 0, "--projector-lr 0.0"), ("projector_lr", "nan", "--projector-lr nan"),
    ("search", "meter", "--search 'meter'"), ("beta", -1, "--beta -1.0"),
    ("task", "coco", "--task 'coco': expected one of aid, scienceqa, slake"),
])
def test_bad_flag_is_refused_before_any_work(flag, value, named, base, cache, tmp_path, capsys):
    import run
    out = tmp_path / "run"
    status = run.main(cli(base, cache, out, **{"skip": None, flag: value})[2:])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert named in err
    assert not out.exists(), "refused before the run folder was made"


def test_bad_flag_from_the_shell_is_one_line(base, cache, tmp_path):
    done = subprocess.run(cli(base, cache, tmp_path / "run", lr="nan"), env=env1(), capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr == "error: --lr nan: expected a finite number > 0\n"


def _slake_tune(base, cache, tmp_path, splits: dict, **settings) -> dict:
    from fixture_data import slake_entry, write_slake
    qid = itertools.count()
    root = write_slake(tmp_path / "Slake", {split: [slake_entry(next(qid), "Is this a CT image?", "Yes", "CLOSED")
                                                    for _ in range(n)] for split, n in splits.items()})
    return tune(TuneConfig(task="slake", data_root=str(root), base=str(base), cache_dir=str(cache),
                           out=str(tmp_path / "r"), **{**TASK_SMALL, **settings}))


def test_empty_validation_split_is_refused_up_front(base, cache, tmp_path):
    from eas.errors import DataError
    with pytest.raises(DataError, match="validation split of .*Slake has no examples"):
        _slake_tune(base, cache, tmp_path, {"train": 8, "validate": 0, "test": 2})
    assert not (tmp_path / "r" / "log.jsonl").exists()


def test_training_split_smaller_than_a_batch_is_refused(base, cache, tmp_path):
    with pytest.raises(UsageError, match="--batch-size 8 must be .* at most the 4 training examples"):
        _slake_tune(base, cache, tmp_path, {"train": 4, "validate": 2, "test": 2})


def test_run_folder_under_a_regular_file(base, cache, tmp_path, capsys):
    import run
    (tmp_path / "file").write_text("")
    status = run.main(cli(base, cache, tmp_path / "file" / "run")[2:])
    err = capsys.readouterr().err
    assert status == 2 and err == f"error: cannot create the run folder {tmp_path / 'file' / 'run'}: Not a directory\n"


@pytest.fixture
def small_disk(tmp_path):
    """make(name, size, read_only) -> a folder on a file system of `size` bytes of its own (tmpfs)."""
    mounted = []

    def make(name: str, size: str = "1m", read_only: bool = False) -> Path:
        where = tmp_path / name
        where.mkdir()
        opts = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True)
        if done.returncode != 0:
            pytest.skip("needs a small file system of its own: mount -t tmpfs (root)")
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        subprocess.run(["umount", "--lazy", str(where)], check=True)  # lazy: a failed writer may hold a file


def test_read_only_run_folder(base, cache, small_disk, capsys):
    import run
    out = small_disk("ro", read_only=True)
    status = run.main(cli(base, cache, out)[2:])
    err = capsys.readouterr().err
    assert status == 2 and err == f"error: cannot write {out / 'log.jsonl'}: Read-only file system\n"


def test_disk_full_while_saving_state(base, cache, small_disk):
    out = small_disk("full", size="128k")  # log.jsonl fits, state.pt (about 240 kB) does not
    with pytest.raises(RunFolderError, match=f"cannot write {out / 'state.pt'}: No space left on device"):
        tune(TuneConfig(base=str(base), cache_dir=str(cache), out=str(out), **SMALL))
    assert sorted(p.name for p in out.iterdir()) == ["log.jsonl"]


def test_disk_full_while_writing_merged(base, cache, small_disk):
    out = small_disk("full", size="1m")  # state.pt fits, merged.pt (about 2.6 MB) does not
    with pytest.raises(EASError, match=f"{out / 'merged.pt'}.*No space left on device"):
        tune(TuneConfig(base=str(base), cache_dir=str(cache), out=str(out), **{**SMALL, "max_test": 2}))
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp") or p.name == "merged.pt"]


def test_unreadable_state_is_one_line(base, cache, tmp_path, capsys):
    import run
    out = tmp_path / "r"
    out.mkdir()
    (out / "state.pt").write_bytes(bytes(range(256)) * 8)
    assert run.main(cli(base, cache, out, "--resume")[2:]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: checkpoint {out / 'state.pt'} is unreadable or corrupt") and err.count("\n") == 1
    torch.save({"stage": "search", "step": 3}, out / "state.pt")
    assert run.main(cli(base, cache, out, "--resume")[2:]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: checkpoint {out / 'state.pt'} lacks stage_time, config,") and err.count("\n") == 1


def test_resume_accepts_any_spelling_of_the_same_paths_and_a_moved_folder(base, cache, tmp_path, monkeypatch):
    """--out and --data-root as ./x, x/ or absolute name the same run; a run folder moved whole
    resumes from its new place (a finished run re-evaluates, with the same answers)."""
    from eas.data.synthetic_aid import write_synthetic_aid
    monkeypatch.chdir(tmp_path)
    write_synthetic_aid(tmp_path / "aid", per_class=4, size=32)
    settings = {**SMALL, "skip": 0, "finetune_epochs": 1, "max_test": 4}
    tune(TuneConfig(base=str(base), cache_dir=str(cache), out="runs/x", data_root="aid", **settings))
    first = (tmp_path / "runs" / "x" / "predictions.jsonl").read_text()
    again = tune(TuneConfig(base=str(base), cache_dir=str(cache), out="./runs/x/", data_root=str(tmp_path / "aid"),
                            resume=True, **settings))
    assert again["merged"]["path"] == str(Path("runs/x/merged.pt"))
    (tmp_path / "runs" / "x").rename(tmp_path / "moved")
    tune(TuneConfig(base=str(base), cache_dir=str(cache), out=str(tmp_path / "moved"), data_root="./aid/",
                    resume=True, **settings))
    assert (tmp_path / "moved" / "predictions.jsonl").read_text() == first


def test_default_run_folder_is_per_task_and_bf16_base_trains(base, cache, tmp_path, monkeypatch):
    """--out defaults to runs/<task>; --dtype bfloat16 keeps the base in bf16 and trains fp32 adapters."""
    monkeypatch.chdir(tmp_path)
    report = tune(TuneConfig(base=str(base), cache_dir=str(cache), dtype="bfloat16",
                             **{**SMALL, "skip": 0, "finetune_epochs": 1, "max_test": 4}))
    assert report["config"]["out"] == str(Path("runs/aid")) and report["config"]["dtype"] == "bfloat16"
    assert (tmp_path / "runs" / "aid" / "merged.pt").is_file()
    adapters = load_checkpoint(tmp_path / "runs" / "aid" / "adapters.pt")["adapters"]
    assert {v.dtype for v in adapters.values()} == {torch.float32}
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "runs" / "aid" / "log.jsonl").read_text().splitlines())]
    assert len(losses) == 7 and all(math.isfinite(x) for x in losses)  # one epoch of train + val, 60 // 8
