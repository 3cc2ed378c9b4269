"""The command line: help texts, generate on tiny models (random and saved) against the library,
and bad input ending in one line `error: ...` with exit status 2."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import run
from eas.io.checkpoint import save_model
from eas.model.config import LavinConfig, LlamaConfig, VisionConfig
from eas.model.image import load_image
from eas.model.lavin import Lavin
from eas.model.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "weights" / "tiny" / "tokenizer.model"
needs_tokenizer = pytest.mark.skipif(not TOKENIZER.exists(), reason="weights/tiny/tokenizer.model not built")


@pytest.mark.parametrize("args,shows", [(["--help"], "{tune,generate,bench}"), (["tune", "--help"], "--dtype DTYPE"),
                                        (["generate", "--help"], "--max-new-tokens")])
def test_help(args, shows):
    out = subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("usage: run.py") and shows in out.stdout


@needs_tokenizer
def test_generate_random_tiny_matches_library(capsys):
    prompt = "Question: hello\nResponse:"
    [text] = run.generate(prompt, random_init=True, max_new_tokens=5)
    assert "RANDOM" in capsys.readouterr().err
    tok = Tokenizer(TOKENIZER)
    model = Lavin(LavinConfig.named("tiny")).init_weights(torch.Generator().manual_seed(0)).eval()
    ref = model.generate(model.build_batch(tok, [(prompt, None, False)]), None, 5, eos_id=tok.eos_id)[0]
    assert len(ref) > 0 and text == tok.decode(ref)


@needs_tokenizer
def test_generate_with_saved_model_and_image_matches_library(tmp_path):
    tok = Tokenizer(TOKENIZER)
    cfg = LavinConfig(llama=LlamaConfig.named("test", vocab_size=tok.vocab_size), vision=VisionConfig.named("test"))
    model = Lavin(cfg).init_weights(torch.Generator().manual_seed(3)).eval()
    save_model(model, tmp_path / "m", tokenizer=TOKENIZER)
    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "red.png")
    [text] = run.generate("Question: colour?\nResponse:", image=[str(tmp_path / "red.png")], model=str(tmp_path / "m"),
                          max_new_tokens=6)
    batch = model.build_batch(tok, [("Question: colour?\nResponse:", None, True)])
    ref = model.generate(batch, load_image(tmp_path / "red.png", 32)[None], 6, eos_id=tok.eos_id)[0]
    assert len(ref) > 0 and text == tok.decode(ref)


def fails(capsys, *argv) -> str:
    """run.py in process must exit with 2 and one line on stderr; -> that line."""
    assert run.main(list(argv)) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_missing_model_is_named(tmp_path, capsys):
    assert f"model {tmp_path / 'nope'} not found" in fails(capsys, "generate", "--model", str(tmp_path / "nope"))


@pytest.mark.parametrize("flag,value,named", [("--max-new-tokens", "-1", "--max-new-tokens -1"),
                                              ("--temperature", "nan", "--temperature nan"),
                                              ("--top-p", "0", "--top-p 0.0")])
def test_bad_sampling_flag_is_refused_before_loading(flag, value, named, tmp_path, capsys):
    # A model that does not exist: the flag must be refused before the model is looked for.
    assert named in fails(capsys, "generate", "--model", str(tmp_path / "nope"), flag, value)


@needs_tokenizer
def test_prompt_longer_than_the_context_is_refused(capsys):
    line = fails(capsys, "generate", "--random", "--prompt", "word " * 2000)
    assert "--prompt takes" in line and "more than the model's context of 512" in line


@needs_tokenizer
def test_answer_beyond_the_cache_is_refused(capsys):
    line = fails(capsys, "generate", "--random", "--prompt", "Hi", "--max-new-tokens", "3000")
    assert "--max-new-tokens 3000: the" in line and "leaves room for at most" in line


def test_random_bytes_as_merged_pt(tmp_path, capsys):
    path = tmp_path / "merged.pt"
    path.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist()))
    assert str(path) in fails(capsys, "generate", "--model", str(path))


def test_bad_input_from_the_shell_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "run.py", "generate", "--max-new-tokens", "-3"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == "error: --max-new-tokens -3: expected a number of tokens >= 0\n"
