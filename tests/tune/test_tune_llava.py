"""`run.py tune --arch llava`: the LLaVA form of a LaVIN base (its LLaMA and ViT, a projector trained
by tune) end to end, with LLaVA-EAS's adapter widths, merged exactly."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from eas.data.aid import paper_split, scan_aid
from eas.data.tasks import load_pixels
from eas.io.checkpoint import save_model
from eas.io.merged import load_merged
from eas.model.config import LavinConfig
from eas.model.image import pixel_loader
from eas.model.lavin import Lavin
from eas.model.llava import Llava
from eas.model.tokenizer import Tokenizer
from eas.tune.config import TuneConfig
from eas.tune.pipeline import tune
from eas.tune.train import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / "weights" / "tiny" / "tokenizer.model"
SMALL = dict(synthetic_per_class=4, setting="50", batch_size=8, val_batch=8, warmup_epochs=1, search_epochs=1,
             finetune_epochs=1, nas_every=1, eval_batch_size=32, skip=1, max_test=16)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    tok = Tokenizer(TOKENIZER)
    cfg = LavinConfig.named("test")
    cfg = dataclasses.replace(cfg, llama=dataclasses.replace(cfg.llama, vocab_size=tok.vocab_size, max_seq_len=256))
    out = tmp_path_factory.mktemp("base")
    save_model(Lavin(cfg).init_weights(torch.Generator().manual_seed(0)), out, tokenizer=TOKENIZER)
    return out


def test_llava_arch_end_to_end(base, tmp_path):
    out = tmp_path / "run"
    report = tune(TuneConfig(base=str(base), cache_dir=str(tmp_path / "cache"), out=str(out), arch="llava", **SMALL))
    assert report["config"]["arch"] == "llava"
    assert (report["config"]["adapter_dim"], report["config"]["skip_dim"]) == (2, 2)  # 128/4096 of dim 64
    assert report["defaults"].startswith("r_a = 2, r_s = 2, 1 fine-tune epochs (set by flags; the llava defaults "
                                         "here: adapter_dim 2, skip_dim 2, finetune_epochs 10)")
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 16
    assert [r["dynamic"] for r in rows] == [r["unmerged"] for r in rows]
    assert [r["static"] for r in rows] == [r["unmerged"] for r in rows]
    adapters = load_checkpoint(out / "adapters.pt")["adapters"]
    assert "adapter_projector.linear_1.weight" in adapters  # the projector trains with the adapters
    assert not any(k.startswith("vision_tower") or k.startswith("visual") for k in adapters)  # LLM-only adapters
    merged = load_merged(out / "merged.pt")
    assert isinstance(merged, Llava) and merged.llama.layers[report["skip_layers"][0]].attention is None
    assert torch.equal(merged.adapter_projector.linear_1.weight, adapters["adapter_projector.linear_1.weight"])
    tok = Tokenizer(merged.tokenizer_ref)
    split = paper_split(scan_aid(report["data"]).examples, "50", seed=0)
    examples, pixels = load_pixels(split.test[:8], merged.cfg.vision.image_size, [], pixel_loader(merged.cfg))
    batch = merged.build_batch(tok, [(e.prompt, None, True) for e in examples])
    assert [tok.decode(t) for t in merged.generate(batch, pixels, 10, eos_id=tok.eos_id)] == [r["static"] for r in rows[:8]]


def test_generate_answers_with_a_tuned_llava_merged_pt(base, tmp_path, capsys):
    """run.py generate on a LLaVA merged.pt: LLaVA pixels, the vicuna_v1 wrapping of the task's own
    question, the same answers the tuning run recorded for its static form."""
    import run
    out = tmp_path / "run"
    tune(TuneConfig(base=str(base), cache_dir=str(tmp_path / "cache"), out=str(out), arch="llava",
                    **{**SMALL, "max_test": 4}))
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    capsys.readouterr()
    assert run.main(["generate", "--model", str(out / "merged.pt"), "--image", *[r["image"] for r in rows]]) == 0
    # split on newlines only: an untrained model's answer may hold characters splitlines() breaks at
    assert capsys.readouterr().out.removesuffix("\n").split("\n") == [r["static"] for r in rows]


def test_llava_defaults_rule():
    """LLaVA-1.5 (7B: 4096 wide, 13B: 5120) keeps the scripts' 128 and 20 epochs; a narrower LLM keeps
    128/4096 of its width and fine-tunes 10 epochs."""
    from eas.tune.config import TuneConfig, arch_defaults, defaults_note, with_defaults
    full = {"adapter_dim": 128, "skip_dim": 128, "finetune_epochs": 20.0}
    assert arch_defaults("llava", 4096) == arch_defaults("llava", 5120) == full
    assert arch_defaults("llava", 256) == {"adapter_dim": 8, "skip_dim": 8, "finetune_epochs": 10.0}
    assert arch_defaults("llava", 64)["adapter_dim"] == 2
    assert arch_defaults("lavin", 256) == arch_defaults("lavin", 4096) == {"adapter_dim": 8, "skip_dim": 32,
                                                                          "finetune_epochs": 20.0}
    cfg = with_defaults(TuneConfig(adapter_dim=16), "llava", 256)
    assert (cfg.adapter_dim, cfg.skip_dim, cfg.finetune_epochs) == (16, 8, 10.0)  # a flag wins over the rule
    assert defaults_note(with_defaults(TuneConfig(), "llava", 256), 256) == (
        "r_a = 8, r_s = 8, 10 fine-tune epochs (LLaVA-EAS's r = 128 x 256/4096 and a shorter fine-tune: the "
        "defaults of an LLM narrower than LLaVA-1.5's, eas.tune.config.arch_defaults)")
    assert defaults_note(with_defaults(TuneConfig(), "llava", 4096), 4096).endswith("(LLaVA-EAS scripts')")


def test_tiny_llava_default_trains_as_many_parameters_as_lavin():
    """The rule's purpose on the tiny base: LLaVA-style and LaVIN-style train ~the same number of parameters."""
    from eas.adapters.attach import EASConfig, add_adapters, freeze_routers, mark_trainable, set_skipped
    from eas.adapters.params import trainable_report
    from eas.io.assemble import llava_form
    from eas.tune.config import arch_defaults
    counts = {}
    for arch in ("lavin", "llava"):
        model = Lavin(LavinConfig.named("tiny"))
        if arch == "llava":
            model = llava_form(model.llama, model.visual)
        widths = arch_defaults(arch, model.llama.cfg.dim)
        add_adapters(model, EASConfig(adapter_dim=widths["adapter_dim"], skip_dim=widths["skip_dim"]))
        freeze_routers(mark_trainable(model))
        set_skipped(model.llama, (6, 7))  # K = 2 of 8, the default
        counts[arch] = trainable_report(model)["trainable"]
    assert counts == {"lavin": 157_024, "llava": 156_240}


def test_llava_search_variant_end_to_end(base, tmp_path):
    """--search llava: K grows 1 -> 2 over the warm-up, then M = 5 sub-networks are scored on the
    step's own training batch every 3 steps with the sigmoid policy, step size 1."""
    out = tmp_path / "run"
    report = tune(TuneConfig(base=str(base), cache_dir=str(tmp_path / "cache"), out=str(out), arch="llava",
                             search="llava", **{**SMALL, "skip": 2, "nas_every": None, "search_epochs": 2,
                                                "max_test": 4}))
    c = report["config"]
    assert (c["search"], c["nas_every"], c["candidates"], c["beta"], c["search_lr"]) == ("llava", 3, 5, 1.0, 1.0)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    search = [r for r in log if r.get("stage") == "search"]
    assert [len(r["skip"]) for r in search] == [1, 2, 2, 2, 2, 2, 2, 2, 2]  # 3 steps/epoch, warm-up 3 steps
    rounds = [r for r in search if "candidates" in r]
    assert [r["step"] for r in rounds] == [3, 6]
    assert all(len({tuple(x) for x in r["candidates"]}) == 5 and len(r["losses"]) == 5 for r in rounds)
    # every update moved only the scored units, by (r_m - r̄) sigmoid'(s) (step size 1)
    s = torch.zeros(4, dtype=torch.float64)
    for r in rounds:
        rewards = torch.exp(-torch.tensor(r["losses"], dtype=torch.float64))
        p = torch.sigmoid(s)
        for subnet, adv in zip(r["candidates"], rewards - rewards.mean()):
            s[subnet] += adv * p[subnet] * (1 - p[subnet])
        assert torch.allclose(s, torch.tensor(r["scores"], dtype=torch.float64), atol=2e-5)
    assert report["preferences"] == pytest.approx(s.tolist(), abs=2e-5)


@pytest.mark.parametrize("task", ["scienceqa", "slake"])
def test_llava_formats_of_scienceqa_and_slake_end_to_end(task, base, tmp_path):
    """--arch llava on the real on-disk formats: LLaVA-1.5's questions and answers are what tune trains on,
    scores, and records in merged.pt; the merged forms answer as the adapters do."""
    from eas.data.scienceqa import SCIENCEQA_LLAVA_FORMAT
    from eas.data.slake import SLAKE_LLAVA_FORMAT
    from tests.tune.test_tune import TASK_SMALL, _scienceqa_set, _slake_set
    root = (_scienceqa_set if task == "scienceqa" else _slake_set)(tmp_path / task)
    out = tmp_path / "run"
    report = tune(TuneConfig(task=task, data_root=str(root), base=str(base), cache_dir=str(tmp_path / "cache"),
                             out=str(out), arch="llava",
                             **{**TASK_SMALL, "max_test": 4, "skip": None, "skip_set": (1,), "finetune_epochs": 1}))
    fmt = SCIENCEQA_LLAVA_FORMAT if task == "scienceqa" else SLAKE_LLAVA_FORMAT
    assert load_merged(out / "merged.pt").prompt_format == fmt
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and [r["static"] for r in rows] == [r["dynamic"] for r in rows] == [r["unmerged"] for r in rows]
    if task == "scienceqa":
        assert "LLaVA's extraction" in report["results"]["unmerged"]["metric"]
