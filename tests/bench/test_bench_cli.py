"""`run.py bench` on tiny shapes: flags refused before work, K/V bytes, backends agree, the page."""
import json
import weakref

import numpy as np
import pytest
import torch

import run
from eas.bench import cost, report, runner
from eas.bench.backends import Compiled, Eager, Ort
from eas.bench.cli import PAGE_HEAD, bench
from eas.bench.llamacpp import missing
from eas.bench.ort_weights import MIN_SHARED_BYTES, SharedWeights, prepack_fits
from eas.bench.variants import ADAPTERS, base_model, bench_config, variants
from eas.model.llama import Llama

TINY = ["--size", "tiny", "--layers", "2", "--skip", "0", "1", "--prompt", "8", "--generate", "3", "--rounds", "1"]


def fails(capsys, *argv) -> str:
    assert run.main(["bench", *argv]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("argv, named", [
    (["--size", "huge"], "--size 'huge'"),
    (["--skip", "8"], "--skip 8"),
    (["--layers", "0"], "--layers 0"),
    (["--generate", "1"], "--generate 1"),
    (["--batch", "0"], "--batch 0"),
    (["--prompt", "2000", "--generate", "100"], "exceeds the 2048 positions"),
    (["--backends", "tensorflow"], "--backends 'tensorflow'"),
    (["--variants", "static"], "must include base"),
    (["--section", "a/b"], "--section 'a/b'"),
    (["--backends", "ort-cpp", "--batch", "2"], "--batch 2: ort-cpp run batch 1 only"),
])
def test_bad_flags_are_refused_before_work(argv, named, capsys, tmp_path):
    out = tmp_path / "B.md"
    assert named in fails(capsys, *argv, "--out", str(out))
    assert not out.exists()


def test_out_must_be_a_markdown_file(capsys, tmp_path):
    assert "--out" in fails(capsys, *TINY, "--out", str(tmp_path))


def test_tiny_run_writes_its_section_and_kv_bytes_are_exact(tmp_path, capsys):
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\n<!-- bench:bench -->\nother size\n<!-- /bench:bench -->\n")
    rows = bench("tiny", 2, [0, 1], [8], [3], [1], ["eager"], cost.KINDS, 1, 1, out, argv=["--size", "tiny"])
    page = out.read_text()
    assert "other size" in page and "<!-- bench:tiny -->" in page and "Command: `python run.py bench --size tiny`" in page
    assert (tmp_path / "bench" / "tiny.png").stat().st_size > 0
    raw = json.loads((tmp_path / "bench" / "tiny.json").read_text())  # every round's times, beside the page
    assert raw["config"]["n_layers"] == 2 and raw["command"] == "python run.py bench --size tiny"
    assert [(r["kind"], r["decode_rounds"], r["prefill_rounds"]) for r in raw["rows"]] == \
        [(r["kind"], r["decode_rounds"], r["prefill_rounds"]) for r in rows]
    cfg = bench_config("tiny", 2)
    kv = {(r["kind"], r["k"]): r["kv_bytes"] for r in rows}
    assert kv[("base", 0)] == cost.kv_cache_bytes(cfg, "base", 0, 1, 11)
    for kind in ("static", "dynamic", "floor", "control"):  # the A/A control comes with static and floor
        assert kv[(kind, 1)] * 2 == kv[("base", 1)]  # (L - K) / L of base, L = 2
    assert " / " in page and "static merged decode vs floor" in page
    bench("tiny", 2, [0], [8], [3], [1], ["eager"], ["base"], 1, 1, out, argv=[], section="tiny-more")
    page = out.read_text()
    assert "<!-- bench:tiny -->" in page and "<!-- bench:tiny-more -->" in page
    assert (tmp_path / "bench" / "tiny-more.png").stat().st_size > 0


def test_a_ks_sessions_are_gone_before_the_next_ks_are_built(monkeypatch):
    from eas.bench import cli
    built, real = [], cli.build_sessions

    def build(base, k, *args):
        assert all(ref() is None for ref in built), "the previous K's sessions are still alive"
        sessions, skipped = real(base, k, *args)
        built.extend(weakref.ref(s) for (_, kind), s in sessions.items() if kind != "base")
        return sessions, skipped

    monkeypatch.setattr(cli, "build_sessions", build)
    bench("tiny", 3, [1, 2], [8], [3], [1], ["eager"], ["base", "static", "floor"], 1, 1, None, argv=[])
    assert len(built) == 6  # static, floor and the A/A control, for each K


def test_the_page_head_is_rewritten_only_between_its_markers(tmp_path):
    out = tmp_path / "B.md"
    out.write_text("<!-- bench:head -->\nstale\n<!-- /bench:head -->\n\nhand-written\n")
    bench("tiny", 2, [0], [8], [3], [1], ["eager"], ["base"], 1, 1, out, argv=[])
    page = out.read_text()
    assert "stale" not in page and PAGE_HEAD in page and "hand-written" in page
    mine = tmp_path / "notes.md"
    mine.write_text("# My notes\n")  # a page of the user's own: only the section is added
    bench("tiny", 2, [0], [8], [3], [1], ["eager"], ["base"], 1, 1, mine, argv=[])
    assert mine.read_text().startswith("# My notes\n") and PAGE_HEAD not in mine.read_text()


def test_run_again_replaces_only_its_section(tmp_path):
    page = report.replace_section("# B\n", "tiny", "first")
    page = report.replace_section(page, "bench", "other")
    page = report.replace_section(page, "tiny", "second")
    assert "first" not in page and page.count("second") == 1 and "other" in page


def _greedy(session, tokens, steps):
    first = session.prefill(tokens, tokens.shape[1] + steps + 1)
    return first, session.decode(first, steps)


def test_ort_decodes_the_same_tokens_as_eager_and_holds_each_shared_weight_once():
    cfg = bench_config("tiny", 2)
    models = variants(base_model(cfg), 1, ("base", "static", "floor"))
    tokens = np.random.default_rng(0).integers(3, cfg.vocab_size, (2, 6))
    shared, sessions = SharedWeights(), {}
    for kind, model in models.items():
        sessions[kind] = Ort(model, 1, shared=shared)
        eager_session = Eager(model)
        eager, ort = _greedy(eager_session, tokens, 4), _greedy(sessions[kind], tokens, 4)
        assert all((a == b).all() for a, b in zip(eager, ort))
        # the bound buffers are the cache, written in place: 11 slots, 0..9 filled, as eager's state
        for name, buf in zip(sessions[kind].layout.past(), sessions[kind].past):
            ref = eager_session.state[name[5:]].numpy()
            assert buf.shape == ref.shape and np.abs(buf - ref).max() < 1e-4
            assert buf[:, :, 9].any() and not buf[:, :, 10:].any()
        # the prefill and decode graphs read one copy: the weights counted are the model's own
        big = [p for p in model.parameters() if p.numel() * 4 >= MIN_SHARED_BYTES]
        assert sessions[kind].weights == sum(p.numel() * 4 for p in big)
    held = {kind: {id(t) for t in s.held} for kind, s in sessions.items()}
    # the floor deletes attentions and changes nothing else: every tensor it reads is the base's
    assert held["floor"] < held["base"]
    assert held["static"] & held["base"] and held["static"] - held["base"]  # merged copies are its own
    assert len(shared.pool) == len(held["base"] | held["static"])
    del sessions, held
    assert len(shared.pool) == 0  # the pool holds nothing its sessions no longer need
    unpacked = Ort(models["static"], 1, shared=SharedWeights(prepack=False))  # what a 7B-width run uses
    assert all((a == b).all() for a, b in zip(_greedy(unpacked, tokens, 4), _greedy(Eager(models["static"]),
                                                                                      tokens, 4)))


def test_the_aa_control_is_the_floor_on_storage_of_its_own_in_every_backend():
    """The control decodes the floor's tokens from weights of its own: no shared storage in
    PyTorch, and none of the floor's pooled ONNX Runtime tensors (the pool keys by content)."""
    cfg = bench_config("tiny", 2)
    base = base_model(cfg)
    models = variants(base, 1, ("base", "static", "floor", "control"))
    ptrs = {kind: {p.data_ptr() for p in m.parameters()} for kind, m in models.items()}
    assert not ptrs["control"] & (ptrs["floor"] | ptrs["base"] | ptrs["static"])
    tokens = np.random.default_rng(0).integers(3, cfg.vocab_size, (2, 6))
    floor = _greedy(Eager(models["floor"]), tokens, 4)
    assert all((a == b).all() for a, b in zip(_greedy(Eager(models["control"]), tokens, 4), floor))
    shared = SharedWeights()
    sessions, _ = runner.build_sessions(base, 1, ("base", "static", "floor", "control"), ["ort"], 11, 1, {}, shared)
    held = {kind: {id(t) for t in s.held} for (_, kind), s in sessions.items()}
    assert held["control"] and not held["control"] & (held["floor"] | held["base"] | held["static"])
    assert held["floor"] < held["base"]  # the other variants still share through the pool
    assert all((a == b).all() for a, b in zip(_greedy(sessions[("ort", "control")], tokens, 4), floor))


def test_the_static_check_is_settled_only_where_the_aa_control_is_within_the_bar():
    cfg = bench_config("tiny", 4)
    row = dict(backend="eager", prompt=8, generated=3, batch=1, prefill_s=1.0, peak_bytes=0, kv_bytes=0, note="", k=2)
    rows = [dict(row, kind="base", decode_s=0.012, decode_rounds=[0.012] * 5),
            dict(row, kind="static", decode_s=0.011, decode_rounds=[0.011] * 5),  # 10 % slower: NOT met alone
            dict(row, kind="floor", decode_s=0.010, decode_rounds=[0.010] * 5),
            dict(row, kind="control", decode_s=0.0101, decode_rounds=[0.0101] * 5)]
    out = report.checks(cfg, rows)
    assert any("static merged decode vs floor +10.0 %" in c and c.endswith("within 3 %: NOT met)") for c in out), out
    assert any("A/A control decode vs floor +1.0 %" in c and c.endswith("within 3 %: met)") for c in out), out
    rows[3]["decode_rounds"] = [0.0106] * 5  # identical models 6 % apart: this cell cannot resolve 3 %
    out = report.checks(cfg, rows)
    assert any("static merged decode vs floor +10.0 %" in c and "within 3 %: not settled: the A/A control below is "
               "not met itself (alone this would read NOT met))" in c for c in out), out
    rows[1]["decode_rounds"] = [0.0101] * 5  # nor does a static merged 1 % from the floor settle it
    assert any("+1.0 % over 5 rounds; within 3 %: not settled: the A/A control" in c for c in report.checks(cfg, rows))
    table = report.cell_table(cfg, rows)
    ideal = cost.ideal_speedup(cfg, "floor", 2, 8, 3, 1, ADAPTERS)  # the control costs what the floor does
    assert (f"A/A control (a 2nd copy of the floor) | eager | 8 | 10.100 | 1.000 / {ideal['prefill']:.3f} | "
            f"1.188 / {ideal['decode']:.3f} |") in table[-1], table[-1]


def test_each_compiled_session_has_a_cache_of_its_own_and_decodes_as_eager():
    cfg = bench_config("tiny", 2)
    models = variants(base_model(cfg), 1, ("base", "static", "floor"))
    tokens = np.random.default_rng(0).integers(3, cfg.vocab_size, (2, 6))
    longer = np.random.default_rng(1).integers(3, cfg.vocab_size, (2, 9))
    sessions = {kind: Compiled(model) for kind, model in models.items()}
    for kind, model in models.items():
        for prompt in (tokens, longer):  # a new state size: the guards left on (Compiled.OPTIONS) recompile
            compiled, eager = _greedy(sessions[kind], prompt, 4), _greedy(Eager(model), prompt, 4)
            assert all((a == b).all() for a, b in zip(compiled, eager))
    # compiled graphs on each session's own code (one per state size), none on the shared Llama.decode_step
    for session in sessions.values():
        code = session.step._torchdynamo_orig_callable.__func__.__code__
        assert len(torch._dynamo.eval_frame._debug_get_cache_entry_list(code)) == 2
    assert not torch._dynamo.eval_frame._debug_get_cache_entry_list(Llama.decode_step.__code__)


def test_weights_in_an_external_data_file_are_read_one_tensor_at_a_time():
    cfg = bench_config("tiny", 2)
    model = base_model(cfg)
    tokens = np.random.default_rng(1).integers(3, cfg.vocab_size, (1, 5))
    ort = Ort(model, 1)
    assert ort.weights == sum(p.numel() * 4 for p in model.parameters() if p.numel() * 4 >= MIN_SHARED_BYTES)
    assert all((a == b).all() for a, b in zip(_greedy(ort, tokens, 3), _greedy(Eager(model), tokens, 3)))


def test_prepacking_is_refused_when_its_copies_would_not_fit():
    assert prepack_fits(1 << 20, 6) and not prepack_fits(1 << 50, 1)


@pytest.mark.skipif(missing() is not None, reason=missing() or "")
def test_llama_cpp_reads_our_weights():
    from eas.bench.llamacpp import LlamaCpp
    cfg = bench_config("tiny", 2)
    model = base_model(cfg)
    ref = LlamaCpp(model, 32, 1, "f32")  # refuses to build if its logits differ from ours
    assert ref.error < 1e-3
    tokens = np.random.default_rng(0).integers(3, cfg.vocab_size, (1, 6))
    assert [x.tolist() for x in _greedy(ref, tokens, 4)] == [x.tolist() for x in _greedy(Eager(model), tokens, 4)]


@pytest.mark.skipif(missing() is not None, reason=missing() or "")
def test_llama_cpp_is_timed_in_a_table_of_its_own(tmp_path):
    """Our variants' table holds no llama.cpp row; the one against llama.cpp holds our base and
    static merged beside it, and is what the llama.cpp checks read."""
    out = tmp_path / "B.md"
    rows = bench("tiny", 2, [1], [8], [3], [1], ["eager", "llama.cpp-f32"], cost.KINDS, 1, 1, out, argv=[])
    versus = sorted((r["backend"], r["kind"]) for r in rows if r["alone"])
    assert versus == [("eager", "base"), ("eager", "static"), ("llama.cpp-f32", "base")]
    assert not any(r["backend"].startswith("llama.cpp") for r in rows if not r["alone"])
    page = out.read_text()
    table = page[page.index("Against llama.cpp"):]
    assert "EAS-1 static merged (eager" in table and "llama.cpp-f32 (logits vs ours" in table


def test_an_unbuilt_cpp_app_is_skipped_with_the_reason(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EAS_CPP_BUILD", str(tmp_path / "no-build"))
    out = tmp_path / "B.md"
    rows = bench("tiny", 2, [0], [8], [3], [1], ["eager", "ort-cpp"], ["base"], 1, 1, out, argv=[])
    assert {r["backend"] for r in rows} == {"eager"}
    reason = f"ort-cpp skipped: {tmp_path / 'no-build' / 'cmake' / 'eas_serve'} is not built (bash export/cpp/build.sh)"
    assert reason in capsys.readouterr().err and reason in out.read_text()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_refused(capsys):
    assert "--device cuda" in fails(capsys, *TINY, "--device", "cuda")


def test_each_ratio_is_to_the_base_timed_in_the_same_cell():
    cfg = bench_config("tiny", 4)
    row = dict(backend="eager", prompt=8, generated=3, batch=1, prefill_s=1.0, peak_bytes=0, kv_bytes=0, note="")
    rows = [dict(row, k=1, kind="base", decode_s=0.010), dict(row, k=1, kind="static", decode_s=0.008),
            dict(row, k=2, kind="base", decode_s=0.012), dict(row, k=2, kind="static", decode_s=0.008)]
    table = report.cell_table(cfg, rows)
    ideal = cost.ideal_speedup(cfg, "static", 2, 8, 3, 1, ADAPTERS)["decode"]
    assert f"| 1.500 / {ideal:.3f} |" in table[-1]  # 12 / 8 ms, not the K=1 cell's 10 / 8
    assert any("static decode speed-up 1.500" in c for c in report.checks(cfg, rows))


def test_checks_pair_times_by_round():
    """Each round's ratio of the two variants timed in it; the check gives their median and range,
    and settles nothing from fewer than 5 rounds."""
    cfg = bench_config("tiny", 4)
    row = dict(backend="eager", prompt=8, generated=3, batch=1, prefill_s=1.0, peak_bytes=0, kv_bytes=0, note="", k=2)
    rows = [dict(row, kind="base", decode_s=0.012, decode_rounds=[0.012, 0.024, 0.012, 0.012, 0.012]),
            dict(row, kind="static", decode_s=0.008, decode_rounds=[0.008, 0.016, 0.007, 0.008, 0.008]),
            dict(row, kind="floor", decode_s=0.010, decode_rounds=[0.010, 0.020, 0.007, 0.010, 0.010])]
    out = report.checks(cfg, rows)
    assert any("static merged decode vs floor -20.0 % (94 % interval -20.0 to +0.0 % over 5 rounds; within 3 %: "
               "not settled" in c for c in out), out
    assert any("static decode speed-up 1.500" in c for c in out), out
    rows[1]["decode_rounds"] = [0.0101, 0.0202, 0.0071, 0.0101, 0.0101]  # every round within 3 % of the floor
    assert any("+1.0 to +1.4 % over 5 rounds; within 3 %: met" in c for c in report.checks(cfg, rows))
    rows[1]["decode_rounds"] = [0.011, 0.022, 0.0077, 0.011, 0.011]  # every round 10 % slower
    assert any("within 3 %: NOT met" in c for c in report.checks(cfg, rows))
    rows[1]["decode_rounds"] = [0.0095, 0.020, 0.0074, 0.0095, 0.0095]  # 5 % faster to 5 % slower: unresolved
    assert any("-5.0 to +5.7 % over 5 rounds; within 3 %: not settled" in c for c in report.checks(cfg, rows))
    for r in rows:  # 3 rounds, every one 10 % slower: a 75 % interval settles nothing
        r["decode_rounds"] = r["decode_rounds"][:3]
    rows[1]["decode_rounds"] = [0.011, 0.022, 0.0077]
    assert any("+10.0 to +10.0 % over 3 rounds; within 3 %: not settled: 75 % is too little confidence" in c
               for c in report.checks(cfg, rows))


def test_llama_cpp_and_ort_checks_pair_by_round():
    """Against llama.cpp and ORT vs eager, the ratios are paired by round as the other checks:
    a slow round of one backend moves the median ratio only as far as that round does."""
    cfg = bench_config("tiny", 4)
    row = dict(prompt=8, generated=3, batch=1, prefill_s=1.0, peak_bytes=0, kv_bytes=0, note="", k=2)
    rows = [dict(row, backend="ort", kind="base", decode_s=0.011, decode_rounds=[0.010, 0.011, 0.030, 0.010, 0.011]),
            dict(row, backend="ort", kind="static", decode_s=0.009,
                 decode_rounds=[0.009, 0.0099, 0.027, 0.009, 0.0099]),
            dict(row, backend="eager", kind="base", decode_s=0.033, decode_rounds=[0.030, 0.033, 0.090, 0.030, 0.033]),
            dict(row, backend="llama.cpp-f32", kind="base", decode_s=0.010,
                 decode_rounds=[0.010, 0.010, 0.025, 0.010, 0.010])]
    out = report.against(rows)
    assert any("our best (ort, 11.00 ms) vs llama.cpp-f32 (10.00 ms): 1.10x its time (94 % interval 1.00-1.20x; "
               "within 1.2x: met" in c for c in out), out
    assert any("EAS-2 static merged (ort, 9.00 ms) vs llama.cpp-f32 base (10.00 ms): 0.99x its time "
               "(94 % interval 0.90-1.08x; beats it: not settled" in c for c in out), out
    assert any("3.00x faster than eager (11.00 vs 33.00 ms; 94 % interval 3.00-3.00x; >= 2x: met" in c
               for c in report.checks(cfg, rows, ort_bar=True)), out
    assert any(c.endswith("3.00-3.00x)") for c in report.checks(cfg, rows)), out  # no bar: not the tiny model


def test_median_interval_covers_as_stated():
    """The order-statistic interval: the textbook ranks at n = 25 (8th and 18th), and its stated
    confidence matches how often it holds the true median of samples drawn from a known law."""
    ranks = {"decode_rounds": list(range(1, 26)), "decode_s": 0}
    ones = {"decode_rounds": [1] * 25, "decode_s": 0}
    assert report.paired(ranks, ones)[1:3] == (8, 18)
    rng = np.random.default_rng(0)
    for n in (4, 9, 25, 60):
        conf = report.paired({"decode_rounds": list(range(n)), "decode_s": 0},
                             {"decode_rounds": [1] * n, "decode_s": 0})[3]
        draws = rng.exponential(size=(20000, n))  # true median ln 2
        held = [lo <= np.log(2) <= hi for lo, hi in (report.paired({"decode_rounds": list(d), "decode_s": 0},
                                                                    {"decode_rounds": [1] * n, "decode_s": 0})[1:3]
                                                     for d in draws)]
        assert abs(np.mean(held) - conf) < 0.01, (n, np.mean(held), conf)
        assert conf >= 0.95 or n < 6


class FakeSession:
    """Records its calls in a shared log; decodes nothing."""

    def __init__(self, key, log):
        self.key, self.log = key, log

    def prefill(self, tokens, slots):
        self.log.append(("prefill", self.key))
        return tokens[:, -1]

    def decode(self, token, steps):
        self.log.append(("decode", self.key, steps))
        return token

    def kv_bytes(self):
        return 0


def test_static_and_floor_are_timed_back_to_back():
    """Round-robin order: per backend base, static, floor, dynamic, unmerged (the finest gap adjacent)."""
    log = []
    keys = [(b, k) for b in ("eager", "ort") for k in ("base", "unmerged", "static", "dynamic", "floor")]
    rows = runner.time_cell({key: FakeSession(key, log) for key in keys}, runner.Cell(2, 4, 3, 1), 1, 50)
    assert [r["kind"] for r in rows[:5]] == ["base", "unmerged", "static", "dynamic", "floor"]  # display order kept
    prefills = [e[1] for e in log if e[0] == "prefill"]
    assert prefills[:10] == [(b, k) for b in ("eager", "ort") for k in ("base", "static", "floor", "dynamic", "unmerged")]
    # a timed round: one backend's sessions at a time (another runtime's spinning threads stay out)
    round_1 = [e[1][0] for e in log[20:] if e[0] == "decode"][:10]
    assert round_1 == ["eager"] * 5 + ["ort"] * 5


def test_static_and_floor_follow_the_same_sessions_alike():
    """Decode chunks go round each round's order as a cycle: over 4 rounds static merged and the
    floor each follow the base, the A/A control and each other equally often, and stay back to back."""
    keys = [("eager", kind) for kind in runner.TIMING_ORDER]
    before = {"static": [], "floor": []}
    for r in range(4):
        kinds = [kind for _, kind in runner.turn_order(keys, r)]
        assert sorted(kinds) == sorted(runner.TIMING_ORDER)
        assert (kinds.index("static") - kinds.index("floor")) % len(keys) in (1, len(keys) - 1)
        for kind in before:
            before[kind].append(kinds[kinds.index(kind) - 1])
    assert sorted(before["static"]) == ["base", "control", "floor", "floor"]
    assert sorted(before["floor"]) == ["base", "control", "static", "static"]


def test_alone_every_session_takes_its_turn_whole():
    """Against llama.cpp: each session prefills and decodes all its steps in its own turn; turns
    rotate, and reverse in odd rounds."""
    log = []
    keys = [("ort", "base"), ("ort", "static"), ("llama.cpp-f32", "base")]
    runner.time_cell({key: FakeSession(key, log) for key in keys}, runner.Cell(1, 4, 5, 1), 2, 50, alone=True)
    timed = log[6:6 + 2 * 6]
    for r in range(2):
        turn = keys[r:] + keys[:r]
        turn = turn[::-1] if r % 2 else turn
        assert timed[6 * r:6 * r + 6] == [e for key in turn for e in (("prefill", key), ("decode", key, 4))]


def test_decode_steps_of_a_round_interleave_across_sessions(monkeypatch):
    monkeypatch.setattr(runner, "CHUNK_S", 0.0)  # chunks of one step
    log = []
    keys = [("eager", "base"), ("eager", "static"), ("eager", "floor")]
    runner.time_cell({key: FakeSession(key, log) for key in keys}, runner.Cell(1, 4, 4, 1), 2, 50)
    # warm-up: each session alone (prefill, 3 steps); each timed round: 3 prefills, then 3 x 3 single steps
    warm, timed = log[:6], log[6:6 + 2 * 12]
    assert warm == [e for key in keys for e in (("prefill", key), ("decode", key, 3))]
    for r in range(2):  # the turn rotates, and runs backwards in odd rounds
        turn = keys[r:] + keys[:r]
        turn = turn[::-1] if r % 2 else turn
        assert timed[12 * r:12 * r + 12] == [("prefill", key) for key in turn] + [("decode", key, 1) for _ in range(3)
                                                                                 for key in turn]
