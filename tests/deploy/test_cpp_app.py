"""The C++ app (export/cpp) against the Python runtime: the same greedy tokens and answer text
from the same export folder, image and prompt; the same pixels as eas/model/image.py (Pillow) on
real JPEG and PNG files; one-line errors with exit status 2 for bad input.

The app is built once per session by export/cpp/build.sh (incremental after the first time). The
tests skip, saying why, only when that script reports a prerequisite it cannot install here (exit
status 3); a failing build fails them."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import sklearn.datasets
from PIL import Image

from eas.model.image import load_image
from export.ort_runtime import OrtRuntime
from export.pipeline import export_model
from export_fixtures import exported

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "export" / "cpp" / "build"
CHINA = Path(sklearn.datasets.__file__).parent / "images" / "china.jpg"
COFFEE = Path(skimage.data.__file__).parent / "coffee.png"
STEPS = 32


@pytest.fixture(scope="session")
def app() -> Path:
    result = subprocess.run(["bash", str(ROOT / "export" / "cpp" / "build.sh")], capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable}, timeout=600)
    if result.returncode == 3:
        pytest.skip(f"the C++ app cannot be built here: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, f"export/cpp/build.sh failed:\n{result.stderr}"
    return BUILD / "cmake"


def run(app: Path, program: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(app / program), *args], capture_output=True, timeout=120)


CASES = [  # (kind, mode, prompt, image, raw): the prompt goes into the manifest's template unless raw
    ("lavin", "dynamic", "What is the label for this image?", CHINA, False),
    ("lavin", "dynamic", None, COFFEE, False),  # the task's own question
    ("lavin", "dynamic", "Question: Name the scene.\nResponse:", COFFEE, True),
    ("lavin", "dynamic", "Tell me a story about {the sea} and a boat.", None, False),
    ("text", "static", "Hi there", None, True),
    ("text", "static", "what is 2 + 2?", None, False),
]


@pytest.fixture(scope="session")
def fp16_export(tmp_path_factory) -> Path:
    """The LaVIN-style dynamic test model exported in fp16 (the app converts pixels and logits)."""
    folder = tmp_path_factory.mktemp("fp16") / "export"
    export_model(exported("lavin", "dynamic").parent / "merged.pt", folder, dtype="fp16", onnx_only=True,
                 log=lambda line: None)
    return folder


@pytest.mark.parametrize("kind,mode,prompt,image,raw", CASES)
def test_answer_equals_python_runtime(app, kind, mode, prompt, image, raw):
    check_answer(app, exported(kind, mode), prompt, image, raw)


@pytest.mark.parametrize("image", [CHINA, None])
def test_fp16_answer_equals_python_runtime(app, fp16_export, image):
    check_answer(app, fp16_export, "What is the label for this image?", image, False)


def check_answer(app: Path, folder: Path, prompt: str | None, image: Path | None, raw: bool) -> None:
    python = OrtRuntime(folder)
    text = python.prompt_format.prompt(prompt, raw)
    want = python.generate([text], [Image.open(image) if image else None], STEPS)[0]
    assert want, "the test model answered nothing: an empty comparison proves nothing"
    image_args = ["--image", str(image)] if image else []
    ask = (["--prompt", prompt] if prompt is not None else []) + (["--raw"] if raw else [])
    args = ["--engine", str(folder), *ask, "--max-new-tokens", str(STEPS), *image_args]
    ids = run(app, "eas_generate", *args, "--ids")
    assert ids.returncode == 0, ids.stderr.decode()
    assert [int(t) for t in ids.stdout.split()] == want
    text = run(app, "eas_generate", *args)
    assert text.returncode == 0, text.stderr.decode()
    assert text.stdout == (python.tokenizer.decode(want) + "\n").encode()


IMAGES = {  # name -> a function writing the file into a folder
    "china.jpg": lambda d: shutil.copy(CHINA, d / "china.jpg"),
    "coffee.png": lambda d: shutil.copy(COFFEE, d / "coffee.png"),
    "gray.jpg": lambda d: Image.open(CHINA).convert("L").save(d / "gray.jpg", quality=90),
    "progressive-444.jpg": lambda d: Image.open(CHINA).save(d / "progressive-444.jpg", progressive=True, subsampling=0),
    "palette.png": lambda d: Image.open(COFFEE).resize((23, 17)).quantize(16).save(d / "palette.png"),
    "rgba.png": lambda d: Image.open(COFFEE).resize((40, 30)).convert("RGBA").save(d / "rgba.png"),
    "gray16.png": lambda d: Image.fromarray((np.arange(30 * 20).reshape(20, 30) * 7).astype(np.uint16)).save(d / "gray16.png"),
}


@pytest.mark.parametrize("name", IMAGES)
def test_pixels_equal_pillow(app, tmp_path, name):
    """Decoding, Pillow's bicubic resize (down and up) and normalisation, to the last float bit
    allowed: max |C++ - eas/model/image.py| <= 1e-6 (it is 0 on the development machine)."""
    IMAGES[name](tmp_path)
    folder = exported("lavin", "dynamic")
    for size in (json.loads((folder / "manifest.json").read_text())["image"]["size"], 7, 224):
        out = tmp_path / f"{size}.f32"
        result = run(app, "eas_preprocess", "--engine", str(folder), "--image", str(tmp_path / name),
                     "--out", str(out), "--size", str(size))
        assert result.returncode == 0, result.stderr.decode()
        cpp = np.fromfile(out, dtype=np.float32).reshape(3, size, size)
        want = load_image(tmp_path / name, size).numpy()
        assert np.abs(cpp - want).max() <= 1e-6, (name, size)


def error_of(result: subprocess.CompletedProcess) -> str:
    """The one stderr line of a refused run (exit status 2, nothing on stdout)."""
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 2 and result.stdout == b"" and len(lines) == 1, result
    assert lines[0].startswith("error: ")
    return lines[0]


def broken_copy(tmp_path: Path, edit) -> Path:
    folder = tmp_path / "export"
    shutil.copytree(exported("lavin", "dynamic"), folder)
    manifest = folder / "manifest.json"
    manifest.write_text(edit(manifest.read_text()))
    return folder


def test_errors_name_the_bad_input(app, tmp_path):
    folder = exported("lavin", "dynamic")
    ask = ["--prompt", "Hi"]
    missing = tmp_path / "nowhere"
    assert str(missing) in error_of(run(app, "eas_generate", "--engine", str(missing), *ask))

    corrupt = broken_copy(tmp_path, lambda text: text[: len(text) // 2])
    assert f"{corrupt}/manifest.json is not valid JSON" in error_of(run(app, "eas_generate", "--engine", str(corrupt), *ask))

    image = tmp_path / "missing.jpg"
    assert f"cannot read image {image}" in error_of(run(app, "eas_generate", "--engine", str(folder), *ask, "--image", str(image)))
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("not a picture")
    assert "not a JPEG or PNG" in error_of(run(app, "eas_generate", "--engine", str(folder), *ask, "--image", str(not_image)))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(CHINA.read_bytes()[:5000])
    assert "truncated" in error_of(run(app, "eas_generate", "--engine", str(folder), *ask, "--image", str(truncated)))


def test_errors_for_a_manifest_that_does_not_fit(app, tmp_path):
    no_key = broken_copy(tmp_path / "a", lambda text: text.replace('"eos_id"', '"eos"'))
    assert "key tokenizer.eos_id is missing" in error_of(run(app, "eas_generate", "--engine", str(no_key), "--prompt", "Hi"))
    renamed = broken_copy(tmp_path / "b", lambda text: text.replace('"present.k.1"', '"present.k.9"'))
    message = error_of(run(app, "eas_generate", "--engine", str(renamed), "--prompt", "Hi"))
    assert "manifest.json does not match" in message and "present.k.9" in message
    no_slot = broken_copy(tmp_path / "c", lambda text: text.replace("{question}", "{q}"))
    assert "key prompt.format.template must hold {question} exactly once" in error_of(
        run(app, "eas_generate", "--engine", str(no_slot), "--prompt", "Hi"))


def test_the_app_reads_each_weight_where_the_manifest_says(app, tmp_path):
    """The graphs' weights come from the data file at the manifest's offsets (mapped once for all
    graphs), not from each session's own load: two same-shaped weights swapped in the manifest
    change the answer, and one past the end of the file is refused, named."""
    args = ["--prompt", "Hi", "--max-new-tokens", "8", "--ids"]
    right = run(app, "eas_generate", "--engine", str(exported("lavin", "dynamic")), *args)
    assert right.returncode == 0, right.stderr.decode()

    def swap(text: str) -> str:
        manifest = json.loads(text)
        weights = manifest["graphs"]["decode"]["weights"]
        a, b = next((a, b) for a in weights for b in weights
                    if a["shape"] == b["shape"] and a["dtype"] == b["dtype"] and a["offset"] < b["offset"])
        a["offset"], b["offset"] = b["offset"], a["offset"]
        return json.dumps(manifest)

    swapped = run(app, "eas_generate", "--engine", str(broken_copy(tmp_path / "a", swap)), *args)
    assert swapped.returncode == 0, swapped.stderr.decode()
    assert swapped.stdout != right.stdout

    def past_end(text: str) -> str:
        manifest = json.loads(text)
        manifest["graphs"]["prefill"]["weights"][0]["offset"] = 1 << 40
        return json.dumps(manifest)

    message = error_of(run(app, "eas_generate", "--engine", str(broken_copy(tmp_path / "b", past_end)), "--prompt", "Hi"))
    assert "of graph prefill" in message and "lies past the end of" in message and "weights.data" in message


def test_a_task_without_its_own_question_needs_a_prompt(app, tmp_path):
    sqa = broken_copy(tmp_path, lambda text: text.replace('"question": "What is the label for this image?"',
                                                          '"question": null').replace('"task": "aid"', '"task": "slake"'))
    assert "tuned on slake, which has no question of its own: pass --prompt" in error_of(
        run(app, "eas_generate", "--engine", str(sqa)))
    assert "--raw sends --prompt untouched" in error_of(run(app, "eas_generate", "--engine", str(sqa), "--raw"))


def test_errors_for_requests_the_export_cannot_serve(app):
    llava = error_of(run(app, "eas_generate", "--engine", str(exported("llava", "static")), "--prompt", "Hi"))
    assert 'key sequence.kind is "llava": this app runs LaVIN-style and text-only exports' in llava
    text = exported("text", "static")
    assert "text-only" in error_of(run(app, "eas_generate", "--engine", str(text), "--prompt", "Hi", "--image", str(CHINA)))
    message = error_of(run(app, "eas_generate", "--engine", str(text), "--prompt", "Hi", "--max-new-tokens", "1000"))
    assert "more than the export's --max-seq" in message
    if "TensorRT backend: NOT built" in (BUILD / "cmake.log").read_text():
        assert "built without TensorRT" in error_of(run(app, "eas_generate", "--engine", str(text), "--prompt", "Hi",
                                                        "--backend", "trt"))


def test_serve_decodes_as_the_python_bench_backend(app):
    """eas_serve (the app's Decoder behind a line protocol, what `run.py bench --backends ort-cpp`
    times) against the Python ONNX Runtime backend on the same bench models: the same greedy
    tokens over decode chunks of several steps, and the same K/V bytes."""
    from eas.bench.backends import Ort
    from eas.bench.cpp import CppOrt
    from eas.bench.variants import base_model, bench_config, variants
    cfg = bench_config("tiny", 4)
    tokens = np.random.default_rng(0).integers(3, cfg.vocab_size, (1, 12))
    for kind, model in variants(base_model(cfg), 2, ["base", "static"]).items():
        runs = []
        for session in (Ort(model, 1), CppOrt(model, 40, 1)):
            token = session.prefill(tokens, 40)
            runs.append([int(token[0])] + [int((token := session.decode(token, 3))[0]) for _ in range(9)]
                        + [session.kv_bytes()])
        assert runs[0] == runs[1], kind
        assert len(set(runs[0][:-1])) > 3, "a model repeating one token proves little"


def test_serve_refuses_a_bad_command(app):
    folder = str(exported("text", "static"))
    for commands, said in (("decode 5 2\n", "a decode step before any prefill"),
                           ("prefill 8 1 2\ndecode x 1\n", 'command "decode x 1": expected integers'),
                           ("prefill 2 1 2 3\n", "cannot hold a prompt of 3"),
                           ("prefill 3 1 2\ndecode 5 2\n", "all 3 K/V slots are written"),
                           ("generate 3\n", "expected prefill, decode or kv")):
        result = subprocess.run([str(app / "eas_serve"), "--engine", folder], input=commands.encode(),
                                capture_output=True, timeout=60)
        lines = result.stderr.decode().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and said in lines[0], (commands, result)
