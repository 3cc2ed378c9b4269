"""benchmarks/aid_page.py: the study page's statistics from hand-made reports (the runs themselves
are benchmarks, minutes each)."""
import argparse
import statistics

import pytest

from benchmarks import aid_page


def report(acc, skip, seed, oracle=None, trainable=157_024):
    return {"accuracy": {"unmerged": acc}, "skip_layers": list(skip), "params": {"share_of_llm": 0.02,
            "trainable": trainable}, "oracle": oracle, "split": {"train": 540, "val": 60, "test": 2400},
            "config": {"recipe": "demo", "seed": seed, **{k: v for k, v in
                       zip(("warmup_epochs", "search_epochs", "finetune_epochs", "nas_every", "candidates",
                            "search_lr", "val_batch", "batch_size", "lr", "weight_decay", "lr_warmup_epochs"),
                           (3.0, 3.0, 20.0, 2, 3, 2.0, 32, 16, 4e-3, 0.02, 1.0))}}}


def oracle(searched, best, rho):
    every = [[[a, b], 1.0 + 0.01 * (a + b)] for a in range(8) for b in range(a + 1, 8)]
    every.sort(key=lambda kv: kv[1])
    return {"searched_set": searched, "oracle_set": best, "preferences": [0.1 * i for i in range(8)],
            "val_loss_none": 1.0, "test_accuracy_skip_one": {"none": 0.0, "0": 2.5}, "val_loss_skip_one": [1.0 + 0.01 * i for i in range(8)],
            "all_sets_val_loss": every, **{k: {"spearman": rho, "overlap": len(set(searched) & set(best)), "k": 2}
                                           for k in ("vs_val", "vs_test_loss", "vs_test_accuracy")}}


@pytest.fixture
def results():
    r = {}
    for seed, (e, r0, r1, o, s0) in enumerate([(30, 28, 26, 31, 25), (27, 27, 25, 29, 24), (29, 30, 24, 30, 26)]):
        r[("eas", seed)] = report(e, (5, 6), seed, oracle([5, 6], [0, 1], [0.5, -0.2, 0.8][seed]))
        r[("random0", seed)] = report(r0, (1, 2), seed)
        r[("random1", seed)] = report(r1, (3, 4), seed)
        r[("oracle", seed)] = report(o, (0, 1), seed)
        r[("skip0", seed)] = report(s0, (), seed, trainable=115_952)
        r[("llava", seed)] = report(e - 4 + seed, (2, 5), seed)
        r[("llava", seed)]["config"].update(search="lavin", adapter_dim=8, skip_dim=8, finetune_epochs=10.0)
    return r


def test_paired_differences_and_ranks(results):
    assert aid_page.per_seed(results, "random") == {0: 27, 1: 26, 2: 27}
    rows = {row.split(" | ")[0]: row for row in aid_page.pair_rows(results)}
    d = [30 - 27, 27 - 26, 29 - 27]
    row = rows["| EAS, searched K-set − random K-set"]
    assert f"{statistics.mean(d):.2f} ± {statistics.stdev(d):.2f}" in row and "3 of 3" in row
    assert aid_page.set_rank(results[("eas", 0)]["oracle"], (0, 1)) == "1 of 28"
    assert aid_page.set_rank(results[("eas", 0)]["oracle"], (6, 7)) == "28 of 28"
    _, rhos = aid_page.oracle_rows(results)
    assert rhos["vs_val"] == [0.5, -0.2, 0.8]
    row = rows["| LLaVA-style EAS, searched K-set − EAS, searched K-set"]
    assert "-3.00 ± 1.00" in row and "0 of 3" in row


def test_page_and_plot_are_written_and_a_partial_study_says_so(results, tmp_path):
    args = argparse.Namespace(out=tmp_path / "RESULTS.md", seeds=3, skip=2, random=2, data_root=None)
    probes = {s: {"lavin_tokens": {"test_accuracy": 37.0 + s, "train_accuracy": 80.0, "features": 1536}}
              for s in range(3)}
    aid_page.write_page(args, results, probes, ["pm seed 0"])
    page = args.out.read_text()
    assert "SYNTHETIC" in page and "PARTIAL" in page and "--max-runs 1" in page
    assert "38.00 ± 1.00" in page  # the probe row
    assert "| LLaVA-style EAS, searched K-set | 3 | 3 | 25.67 ± 1.53 |" in page
    assert "The LLaVA-style arms use the recipe demo" in page and "r_a 8, r_s 8, 10 fine-tune epochs" in page
    assert "python benchmarks/aid_study.py --out docs/RESULTS.md --seeds 3 --skip 2 --random 2" in page
    assert (tmp_path / "aid_oracle.png").read_bytes()[:4] == b"\x89PNG"
    aid_page.write_page(args, results, probes, [])
    assert "PARTIAL" not in args.out.read_text()
