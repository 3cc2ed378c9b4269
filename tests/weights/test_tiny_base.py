"""The shipped tiny base is really pretrained, loads through the public loader, and its recipe
reproduces (weights/tiny/CARD.md)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "weights" / "tiny"
sys.path.insert(0, str(ROOT / "weights"))

import eval_tiny  # noqa: E402
import tiny_data  # noqa: E402
from eas.errors import CheckpointError  # noqa: E402
from eas.io.checkpoint import load_model  # noqa: E402
from eas.model.lavin import Lavin  # noqa: E402
from eas.model.tokenizer import Tokenizer  # noqa: E402
from pretrain_tiny import LR, WARMUP, load_state, schedule, text_blocks  # noqa: E402

pytestmark = pytest.mark.skipif(not (TINY / "model.safetensors").exists(),
                                reason="weights/tiny/model.safetensors not built (python weights/pretrain_tiny.py)")


@pytest.fixture(scope="module")
def base():
    model = load_model(TINY, dtype=torch.float32).eval()
    assert isinstance(model, Lavin)
    return model, Tokenizer(TINY / "tokenizer.model")


def test_checkpoint_is_small():
    assert sum(f.stat().st_size for f in TINY.iterdir()) <= 25 * 2**20


def test_text_perplexity_beats_unigram_threefold(base):
    model, tok = base
    heldout = text_blocks(tok, "heldout", 0)[:24]
    ppl = eval_tiny.model_perplexity(model, heldout)
    unigram = eval_tiny.unigram_perplexity(text_blocks(tok, "train", 0), heldout, tok.vocab_size)
    assert unigram / ppl >= 3.0, f"held-out perplexity {ppl:.1f} vs unigram {unigram:.1f}"


def test_answers_unseen_image_questions_well_above_chance(base):
    """Held-out images of the default pretraining mix (drawn scenes, digits, textures, photos).

    Measured when the checkpoint was made (weights/tiny/CARD.md): 0.39 overall against 0.21 for a
    uniform guess and 0.28 for always answering the most frequent answer; global properties
    (background 1.00, texture 0.74, photo 0.63) are learnt, fine local ones (colour of one small
    shape, digit identity) barely. The thresholds sit below those figures with room for the
    smaller sample drawn here.
    """
    model, tok = base
    exs = list(tiny_data.examples(0, "heldout", 400))
    scores = eval_tiny.qa_accuracy(model, tok, exs)
    total = sum(n for _, n in scores.values())
    acc = sum(c for c, _ in scores.values()) / total
    majority = tiny_data.majority_rates(exs)  # always answering the most frequent answer per type
    baseline = sum(majority[q][1] * n for q, (_, n) in scores.items()) / total
    chance = sum(tiny_data.chance_levels()[q][1] * n for q, (_, n) in scores.items()) / total
    assert acc >= 1.5 * chance and acc > baseline, \
        f"accuracy {acc:.2f}, uniform chance {chance:.2f}, majority baseline {baseline:.2f}"
    for q in ("background", "texture", "photo"):
        correct, n = scores[q]
        assert correct / n >= tiny_data.chance_levels()[q][1] + 0.25, f"{q}: {correct}/{n}"


def test_recipe_reproduces_first_losses():
    expected = json.loads((TINY / "recipe_check.json").read_text())
    out = subprocess.run([sys.executable, "weights/pretrain_tiny.py", "--steps", "3", "--check",
                          str(TINY / "recipe_check.json"), "--threads", str(expected["threads"])],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["match"]


def test_recipe_schedule_warms_up_then_decays_to_a_tenth():
    total = 2400
    assert schedule(0, total) == pytest.approx(LR / WARMUP)  # the first update already moves the weights
    assert schedule(WARMUP - 1, total) == pytest.approx(LR)
    halfway = WARMUP + (total - WARMUP) // 2 - 1
    assert schedule(halfway, total) == pytest.approx(0.1 * LR + 0.9 * LR * 0.5)
    assert schedule(total - 1, total) == pytest.approx(0.1 * LR)
    assert schedule(2, 3) == schedule(2, total)  # a short --check run sees the recipe's rates


def test_unreadable_resume_state_names_the_file(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    (tmp_path / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"state\.pt.*delete it to start over"):
        load_state(tmp_path / "state.pt", model, opt)
    torch.save({"model": model.state_dict()}, tmp_path / "state.pt")  # no optimizer state
    with pytest.raises(CheckpointError, match="'opt'"):
        load_state(tmp_path / "state.pt", model, opt)
