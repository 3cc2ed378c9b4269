"""`python run.py generate` asks as the model was tuned: the question goes into the task's template
(recorded in merged.pt and the manifest) for PyTorch (--model merged.pt) and the export runtimes
(--engine DIR) alike, `--image` alone asks the task's own question and `--raw` sends the prompt as
typed; bad requests to an export folder end in one line and exit status 2."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

import run
from eas.io.merged import load_merged
from eas.model.image import load_image
from eas.model.tokenizer import Tokenizer
from export.manifest import VERSION
from export.pipeline import export_model
from export_fixtures import exported

QUESTION = "What is the label for this image?"
# Typed out rather than taken from eas.data.aid: the template must give exactly the tuning prompt.
AID_TUNING_PROMPT = "Question: What is the label for this image?\nAnswer the question using a single word.\nResponse:"
AID_BUDGET = 10


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    paths = [folder / f"{name}.png" for name in ("china", "flower")]
    for path in paths:
        Image.fromarray(load_sample_image(path.stem + ".jpg")).save(path)
    return paths


@torch.no_grad()
def library_answers(folder: Path, prompt: str, images: list[Path], steps: int) -> list[str]:
    """PyTorch's greedy answers to `prompt` as typed, through the library alone (no run.py, no template)."""
    model = load_merged(folder.parent / "merged.pt")
    tok = Tokenizer(folder / "tokenizer.model")
    pixels = torch.stack([load_image(p, model.cfg.vision.image_size) for p in images])
    out = model.generate(model.build_batch(tok, [(prompt, None, True)] * len(images)), pixels, steps, eos_id=tok.eos_id)
    return [tok.decode(t) for t in out]


@pytest.mark.parametrize("source", ["model", "engine"])
def test_generate_wraps_the_question_in_the_tuned_template(source, photos, capsys):
    folder = exported("lavin", "static")
    where = ["--model", str(folder.parent / "merged.pt")] if source == "model" else ["--engine", str(folder)]
    want = library_answers(folder, AID_TUNING_PROMPT, photos, AID_BUDGET)
    assert any(want), "the test model answered nothing: an empty comparison proves nothing"
    asked = run.main(["generate", *where, "--image", *map(str, photos), "--prompt", QUESTION])
    assert asked == 0 and capsys.readouterr().out == "\n".join(want) + "\n"
    assert run.main(["generate", *where, "--image", *map(str, photos)]) == 0  # the task's own question
    assert capsys.readouterr().out == "\n".join(want) + "\n"
    raw = "Question: Name it.\nResponse:"
    assert run.main(["generate", *where, "--image", str(photos[0]), "--prompt", raw, "--raw",
                     "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out == library_answers(folder, raw, photos[:1], 12)[0] + "\n"


def test_the_manifest_carries_merged_pt_s_prompt_format():
    folder = exported("text", "dynamic")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["prompt"]["format"] == load_merged(folder.parent / "merged.pt").prompt_format.to_json()
    assert manifest["prompt"]["format"]["template"].replace("{question}", QUESTION) == AID_TUNING_PROMPT


def fails(capsys, *argv) -> str:
    """run.py in process exits with 2 and one `error:` line, nothing on stdout; -> that line."""
    assert run.main(["generate", *argv]) == 2
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert captured.out == "" and len(err) == 1 and err[0].startswith("error: "), captured
    return err[0]


def copy_with(tmp_path: Path, edit) -> Path:
    folder = tmp_path / "export"
    shutil.copytree(exported("lavin", "static"), folder)
    edit(folder)
    return folder


def test_requests_the_export_cannot_serve(photos, tmp_path, capsys):
    folder = str(exported("lavin", "static"))
    assert "more than the export's --max-seq 128" in fails(capsys, "--engine", folder, "--prompt", "word " * 80)
    small = tmp_path / "batch2"
    export_model(exported("lavin", "static").parent / "merged.pt", small, max_batch=2, onnx_only=True,
                 log=lambda line: None)
    assert "batch of 3 exceeds the export's --max-batch 2" in fails(
        capsys, "--engine", str(small), "--image", *map(str, photos), str(photos[0]))
    assert "is text-only" in fails(capsys, "--engine", str(exported("text", "static")), "--image", str(photos[0]))


def test_bad_export_folders_are_named(tmp_path, capsys):
    assert f"engine folder {tmp_path / 'nope'} does not exist" in fails(capsys, "--engine", str(tmp_path / "nope"))
    no_tok = copy_with(tmp_path / "a", lambda f: (f / "tokenizer.model").unlink())
    assert f"tokenizer model {no_tok / 'tokenizer.model'} does not exist" in fails(capsys, "--engine", str(no_tok))

    def rename_output(f: Path):
        text = (f / "manifest.json").read_text()
        (f / "manifest.json").write_text(text.replace('"present.k.1"', '"present.k.9"'))
    renamed = copy_with(tmp_path / "b", rename_output)
    line = fails(capsys, "--engine", str(renamed))
    assert "prefill.onnx has outputs" in line and "the manifest does not belong to this graph" in line
    no_graph = copy_with(tmp_path / "c", lambda f: (f / "decode.onnx").unlink())
    assert f"graph {no_graph / 'decode.onnx'} named by the manifest does not exist" in fails(
        capsys, "--engine", str(no_graph))
    old = copy_with(tmp_path / "d", lambda f: (f / "manifest.json").write_text(
        (f / "manifest.json").read_text().replace(f'"version": {VERSION}', f'"version": {VERSION - 1}')))
    assert f"is not a eas-export version {VERSION} manifest" in fails(capsys, "--engine", str(old))


def test_flags_that_do_not_go_with_an_export_folder(tmp_path, capsys):
    folder = str(exported("lavin", "static"))
    assert "drop --model" in fails(capsys, "--engine", folder, "--model", "x.pt")
    assert "decode greedily" in fails(capsys, "--engine", folder, "--temperature", "0.7")
    assert "--backend trt runs an export folder: pass --engine" in fails(capsys, "--random", "--backend", "trt")
    assert "--raw sends --prompt untouched" in fails(capsys, "--engine", folder, "--raw")
    assert "records no task prompt template" in fails(capsys, "--random")
