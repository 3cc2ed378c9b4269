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
    assert (report["config"]["adapter_dim"], report["config"]["skip_dim"]) == (128, 128)  # LLaVA-EAS widths
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
    assert capsys.readouterr().out.splitlines() == [r["static"] for r in rows]
