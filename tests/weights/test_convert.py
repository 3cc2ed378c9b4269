"""The weight converters: every failure is one line naming the path, exit status 2, no output left."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from eas.io.checkpoint import load_model, save_model
from eas.io.load_clip import load_vision
from eas.model.config import LlamaConfig, VisionConfig
from eas.model.llama import Llama
from eas.model.vit import VisionTransformer
from helpers import openai_clip_state

REPO = Path(__file__).resolve().parents[2]
CLIP_CFG = VisionConfig(image_size=32, patch_size=8, width=64, layers=2, heads=1, output_dim=24)


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "weights" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def convert_clip():
    return script("convert_clip")


@pytest.fixture(scope="module")
def convert_llama():
    return script("convert_llama")


def clip_state(gen) -> tuple[VisionTransformer, dict]:
    vit = VisionTransformer(CLIP_CFG).init_weights(gen)
    return vit, openai_clip_state(vit)


def fails_cleanly(main, argv, culprit: str, root: Path, capsys) -> None:
    """main(argv) exits 2 with one line naming `culprit` and adds nothing under `root` (no DST, no temporary)."""
    before = set(root.rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and culprit in err, err
    assert set(root.rglob("*")) == before, set(root.rglob("*")) - before


def test_clip_conversion_round_trips(convert_clip, gen, tmp_path):
    vit, state = clip_state(gen)
    torch.save(state, tmp_path / "clip.pt")
    (tmp_path / "out").mkdir()  # an empty folder is accepted
    assert convert_clip.main([str(tmp_path / "clip.pt"), str(tmp_path / "out"), "--dtype", "float32"]) == 0
    loaded = load_vision(tmp_path / "out")
    assert loaded.cfg == CLIP_CFG
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in vit.state_dict().items())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]


@pytest.mark.parametrize("case", ["missing", "junk", "not_clip", "conv_3d", "wrong_shape", "unwritable", "not_empty"])
def test_clip_conversion_failures(case, convert_clip, gen, tmp_path, capsys):
    _, state = clip_state(gen)
    src, dst, culprit = tmp_path / "clip.pt", tmp_path / "out", "clip.pt"
    if case == "junk":
        src.write_bytes(b"junk" * 10)
    elif case == "not_clip":
        state = {"model.embed_tokens.weight": torch.zeros(4, 4)}
    elif case == "conv_3d":
        state["visual.conv1.weight"] = torch.zeros(64, 3, 8)
        culprit = "conv1.weight"
    elif case == "wrong_shape":
        state["visual.ln_pre.bias"] = torch.zeros(5)
        culprit = "ln_pre.bias"
    elif case == "unwritable":
        (tmp_path / "file").write_text("a file, not a folder")
        dst = culprit = tmp_path / "file" / "out"
    elif case == "not_empty":
        dst.mkdir()
        (dst / "keep.txt").write_text("older work")
        culprit = "out already exists"
    if case not in ("missing", "junk"):
        torch.save(state, src)
    fails_cleanly(convert_clip.main, [str(src), str(dst)], str(culprit), tmp_path, capsys)
    if case == "not_empty":
        assert [p.name for p in dst.iterdir()] == ["keep.txt"]


def test_clip_write_failure_leaves_no_output(convert_clip, gen, tmp_path, capsys, monkeypatch):
    _, state = clip_state(gen)
    torch.save(state, tmp_path / "clip.pt")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("eas.io.checkpoint.save_config", full_disk)  # after the weights are written
    fails_cleanly(convert_clip.main, [str(tmp_path / "clip.pt"), str(tmp_path / "out")],
                  "No space left on device", tmp_path, capsys)


@pytest.mark.parametrize("case", ["missing", "not_llama", "vision_folder", "wrong_shape", "unwritable", "same_folder"])
def test_llama_conversion_failures(case, convert_llama, gen, tmp_path, capsys):
    model = Llama(LlamaConfig.named("test")).init_weights(gen)
    src, dst, culprit = tmp_path / "src", tmp_path / "out", "src"
    if case != "missing":
        save_model(model, src)
    if case == "not_llama":
        (src / "config.json").unlink()
    elif case == "vision_folder":
        save_model(VisionTransformer(CLIP_CFG), src)
        culprit = "not a LLaMA"
    elif case == "wrong_shape":
        state = {k: v.clone() for k, v in model.state_dict().items()}
        state["layers.1.attention.wv.weight"] = torch.zeros(8, 64)
        save_file(state, src / "model.safetensors")
        culprit = "layers.1.attention.wv.weight"
    elif case == "unwritable":
        (tmp_path / "file").write_text("a file, not a folder")
        dst = culprit = tmp_path / "file" / "out"
    elif case == "same_folder":
        dst, culprit = src, "src already exists"
    fails_cleanly(convert_llama.main, [str(src), str(dst)], str(culprit), tmp_path, capsys)
    if case == "same_folder":
        assert torch.equal(load_model(src).output.weight, model.output.weight)  # untouched


@pytest.mark.parametrize("name", ["convert_clip", "convert_llama"])
def test_converter_process_prints_no_traceback(name, tmp_path):
    done = subprocess.run([sys.executable, f"weights/{name}.py", str(tmp_path / "nowhere"), str(tmp_path / "out")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and "nowhere" in done.stderr
    assert not (tmp_path / "out").exists()
