"""benchmarks/aid_study.py's bookkeeping with `tune` replaced by a fake (each real run takes minutes):
arm order, reuse of a set already fine-tuned for the seed, --max-runs, and stale folders."""
import json

import pytest

from benchmarks import aid_study


@pytest.fixture
def fake(monkeypatch, tmp_path):
    calls = []

    def tune(cfg):
        calls.append(cfg)
        skip = list(cfg.skip_set) if cfg.skip_set else ([5, 6] if cfg.skip else [])
        report = {"skip_layers": skip, "accuracy": {"unmerged": 20.0 + len(calls)},
                  "config": {"skip": cfg.skip, "skip_set": list(cfg.skip_set) if cfg.skip_set else None,
                             "seed": cfg.seed, "oracle": cfg.oracle, "data_root": None,
                             "adapter_dim": cfg.adapter_dim, "arch": cfg.arch},
                  "oracle": {"oracle_set": [5, 6] if cfg.seed == 0 else [0, 1]} if cfg.oracle else None}
        out = tmp_path / "runs" / cfg.out.split("/runs/")[1]
        out.mkdir(parents=True)
        (out / "report.json").write_text(json.dumps(report))
        return report
    monkeypatch.setattr(aid_study, "tune", tune)
    monkeypatch.setattr(aid_study, "probe_seed", lambda seed, root: {"lavin_tokens": {"test_accuracy": 1.0}})
    monkeypatch.setattr(aid_study, "write_page", lambda args, results, probes, missing: pages.append(
        (dict(results), dict(probes), list(missing))))
    pages = []
    return calls, pages, tmp_path


def study(tmp_path, *extra):
    return aid_study.main(["--out", str(tmp_path / "R.md"), "--runs", str(tmp_path / "runs"), "--seeds", "2",
                           "--random", "1", "--resume", *extra])


def test_arms_run_in_order_and_a_set_already_tuned_is_reused(fake):
    calls, pages, tmp_path = fake
    assert study(tmp_path, "--max-runs", "3") == 0  # eas seeds 0 and 1, then the probe of seed 0
    assert [(c.seed, c.skip, c.oracle) for c in calls] == [(0, 2, True), (1, 2, True)]
    results, probes, missing = pages[-1]
    assert set(probes) == {0} and "probe seed 1" in missing and "random0 seed 1" in missing and ("eas", 1) in results
    assert study(tmp_path) == 0
    results, probes, missing = pages[-1]
    assert missing == [] and set(probes) == {0, 1}
    # seed 0's oracle set is its searched set: reused, not fine-tuned again
    assert results[("oracle", 0)] is results[("eas", 0)]
    assert results[("oracle", 1)]["skip_layers"] == [0, 1]
    assert [c.adapter_dim for c in calls if c.adapter_dim] == [14, 14]  # parameter-matched, both seeds
    names = sorted(p.parent.relative_to(tmp_path / "runs").as_posix() for p in (tmp_path / "runs").rglob("report.json"))
    assert "s1/set0-1" in names and "s0/pm14" in names and "s0/skip0" in names
    # the LLaVA-style arms come last: searched K, then no skip, over every seed
    assert [(c.arch, c.skip, c.seed) for c in calls[-4:]] == [("llava", 2, 0), ("llava", 2, 1), ("llava", 0, 0),
                                                             ("llava", 0, 1)]
    assert "s1/llava" in names and "s1/llava0" in names
    n = len(calls)
    assert study(tmp_path) == 0 and len(calls) == n  # everything reused


def test_a_folder_run_with_other_settings_is_refused(fake, capsys):
    calls, pages, tmp_path = fake
    study(tmp_path, "--max-runs", "1")
    report = tmp_path / "runs" / "s0" / "eas" / "report.json"
    r = json.loads(report.read_text())
    r["config"]["skip"] = 4
    report.write_text(json.dumps(r))
    assert study(tmp_path) == 2
    assert "run with other settings" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        aid_study.main(["--bogus"])
    assert aid_study.main(["--seeds", "0"]) == 2
