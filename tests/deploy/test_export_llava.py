"""Export of the LLaVA wiring: vision graph = tower + mlp2x_gelu on patch tokens, image tokens at the
<image> position of the vicuna_v1 conversation. Every graph was checked against PyTorch in ONNX
Runtime by the export itself; here the whole pipeline (manifest layout, LLaVA preprocessing, greedy
decoding) must give PyTorch's tokens, and run.py generate --engine PyTorch's answers."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

import run
from eas.io.merged import load_merged
from eas.model.image import llava_preprocess
from eas.model.llava import build_llava_batch, llava_question
from eas.model.tokenizer import Tokenizer
from export.layout import build_layout, prompt_pieces
from export.ort_runtime import OrtRuntime
from export.runtime import preprocess as manifest_preprocess
from export_fixtures import exported

# non-square photos (427 x 640): expand2square pads them with CLIP's mean colour
PHOTOS = [Image.fromarray(load_sample_image(name)).crop((0, 0, 427, 300 + 100 * i))
          for i, name in enumerate(("china.jpg", "flower.jpg"))]
EXAMPLES = [("What is the label for this image?", 0), ("Tell me a story about the sea and a boat.", None),
            ("Name it:", 1)]
STEPS = 24


def pixels_of(model, images):
    size = model.cfg.vision.image_size
    return torch.stack([llava_preprocess(im, size, model.cfg.image_mean, model.cfg.image_std) if im is not None
                        else torch.zeros(3, size, size) for im in images])


def test_manifest_describes_the_llava_wiring():
    folder = exported("llava", "static")
    manifest = json.loads((folder / "manifest.json").read_text())
    model = load_merged(folder.parent / "merged.pt")
    assert manifest["sequence"]["kind"] == "llava" and manifest["sequence"]["n_image_tokens"] == 16  # (32/8)^2
    assert manifest["graphs"]["vision"]["outputs"][0]["shape"] == ["images", 16, model.cfg.llama.dim]
    assert [t["name"] for t in manifest["graphs"]["embed"]["inputs"]] == ["tokens"]
    assert manifest["image"]["pad_to_square"] == [122, 116, 104]  # int(255 x CLIP's mean), LLaVA's fill
    assert max(max(e.values()) for e in manifest["verification"].values()) <= 1e-4


@pytest.mark.parametrize("image", [True, False])
def test_layout_from_the_manifest_equals_build_llava_batch(image):
    folder = exported("llava", "static")
    sequence = json.loads((folder / "manifest.json").read_text())["sequence"]
    tok = Tokenizer(folder / "tokenizer.model")
    prompts = ["What is it?", "Question: Tell me more.\nResponse:", " <image>\nPlaced by the user. " if image else "x"]
    ref = build_llava_batch(tok, [(llava_question(p), None, image) for p in prompts], sequence["n_image_tokens"])
    encode = lambda s: tok.encode(s, bos=False, eos=False)  # noqa: E731
    got = build_layout(sequence, [prompt_pieces(sequence, encode, p, image) for p in prompts], [image] * 3)
    for name in ("tokens", "positions", "key_mask", "prompt_mask", "image_slots", "has_image"):
        np.testing.assert_array_equal(got[name], getattr(ref, name).numpy(), err_msg=name)
    with pytest.raises(ValueError, match="<image> once"):
        prompt_pieces(sequence, encode, "<image> twice <image>", True)


def test_llava_preprocessing_from_the_manifest_equals_the_model_code():
    folder = exported("llava", "static")
    manifest = json.loads((folder / "manifest.json").read_text())
    model = load_merged(folder.parent / "merged.pt")
    for photo in PHOTOS:
        np.testing.assert_array_equal(manifest_preprocess(photo, manifest["image"]), pixels_of(model, [photo])[0].numpy())


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_ort_generation_equals_pytorch_greedy(mode):
    folder = exported("llava", mode)
    runtime = OrtRuntime(folder)
    model = load_merged(folder.parent / "merged.pt")
    prompts, images = [p for p, _ in EXAMPLES], [None if i is None else PHOTOS[i] for _, i in EXAMPLES]
    with torch.no_grad():
        batch = model.build_batch(runtime.tokenizer, [(p, None, im is not None) for p, im in zip(prompts, images)])
        ref = model.generate(batch, pixels_of(model, images), STEPS, eos_id=runtime.tokenizer.eos_id)
    got = runtime.generate(prompts, images, STEPS)
    assert got == ref
    assert sum(len(t) for t in got) >= STEPS * len(EXAMPLES) - 2  # hardly any EOS: ~24 tokens compared per row


def test_generate_with_the_engine_answers_as_pytorch(tmp_path, capsys):
    folder = exported("llava", "static")
    paths = []
    for i, photo in enumerate(PHOTOS):
        paths.append(tmp_path / f"photo{i}.png")
        photo.save(paths[-1])
    answers = {}
    for source in (["--model", str(folder.parent / "merged.pt")], ["--engine", str(folder)]):
        assert run.main(["generate", *source, "--image", *map(str, paths), "--max-new-tokens", "12"]) == 0
        answers[source[0]] = capsys.readouterr().out
    assert answers["--engine"] == answers["--model"] and answers["--model"].strip()
