"""The command line: help texts, and generate on tiny models (random and saved)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import run
from eas.io.checkpoint import save_model
from eas.model.config import LavinConfig, LlamaConfig, VisionConfig
from eas.model.lavin import Lavin
from eas.model.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "weights" / "tiny" / "tokenizer.model"
needs_tokenizer = pytest.mark.skipif(not TOKENIZER.exists(), reason="weights/tiny/tokenizer.model not built")


@pytest.mark.parametrize("args", [["--help"], ["generate", "--help"]])
def test_help(args):
    out = subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "usage: run.py" in out.stdout


@needs_tokenizer
def test_generate_random_tiny(capsys):
    text = run.generate("Question: hello\nResponse:", random_init=True, max_new_tokens=5)
    assert "RANDOM" in capsys.readouterr().err
    assert len(Tokenizer(TOKENIZER).encode(text, False, False)) <= 5 + 2


@needs_tokenizer
def test_generate_with_saved_model_and_image_matches_library(tmp_path):
    tok = Tokenizer(TOKENIZER)
    cfg = LavinConfig(llama=LlamaConfig.named("test", vocab_size=tok.vocab_size), vision=VisionConfig.named("test"))
    model = Lavin(cfg).init_weights(torch.Generator().manual_seed(3)).eval()
    save_model(model, tmp_path / "m", tokenizer=TOKENIZER)
    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "red.png")
    text = run.generate("Question: colour?\nResponse:", image=str(tmp_path / "red.png"), model=str(tmp_path / "m"),
                        max_new_tokens=6)
    from eas.model.image import load_image
    batch = model.build_batch(tok, [("Question: colour?\nResponse:", None, True)])
    ref = model.generate(batch, load_image(tmp_path / "red.png", 32)[None], 6, eos_id=tok.eos_id)[0]
    assert text == tok.decode(ref)


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="not found"):
        run.generate("hi", model=str(tmp_path / "nope"))
