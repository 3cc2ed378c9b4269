"""The ONNX Runtime runtime (export/ort_runtime.py) generates exactly PyTorch's greedy tokens, and
the layout and preprocessing it rebuilds from manifest.json equal the model code's."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

from eas.errors import UsageError
from eas.io.merged import load_merged
from eas.model.generate import generate
from eas.model.image import IMAGENET_MEAN, IMAGENET_STD, preprocess
from eas.model.lavin import build_batch
from eas.model.tokenizer import Tokenizer
from export.layout import build_layout, prompt_pieces
from export.ort_runtime import OrtRuntime
from export.runtime import preprocess as manifest_preprocess
from export_fixtures import encode_batch, exported

PHOTOS = [Image.fromarray(load_sample_image(name)) for name in ("china.jpg", "flower.jpg")]
BATCH_1 = [("What is the label for this image?", 0)]
BATCH_3 = [("What is the label for this image?", 0), ("Tell me a story about the sea and a boat.", None),
           ("Name it:", 1)]
STEPS = 32


@torch.no_grad()
def pytorch_tokens(model, tok, prompts, images):
    if images is None:
        tokens, positions, mask = encode_batch(tok, prompts)
        return generate(model, model.tok_embeddings(tokens), positions, mask, STEPS, eos_id=tok.eos_id)
    batch = model.build_batch(tok, [(p, None, im is not None) for p, im in zip(prompts, images)])
    size = model.cfg.vision.image_size
    pixels = torch.stack([preprocess(im, size) if im is not None else torch.zeros(3, size, size) for im in images])
    return model.generate(batch, pixels, STEPS, eos_id=tok.eos_id)


@pytest.mark.parametrize("kind,mode", [("lavin", "static"), ("lavin", "dynamic"), ("text", "static"), ("text", "dynamic")])
@pytest.mark.parametrize("examples", [BATCH_1, BATCH_3], ids=["batch1", "batch3-left-padded"])
def test_ort_generation_equals_pytorch_greedy(kind, mode, examples):
    folder = exported(kind, mode)
    runtime = OrtRuntime(folder)
    assert set(runtime.providers.values()) == {"CPUExecutionProvider"}
    model = load_merged(folder.parent / "merged.pt")
    prompts = [p for p, _ in examples]
    images = [None if i is None or kind == "text" else PHOTOS[i] for _, i in examples]
    ref = pytorch_tokens(model, runtime.tokenizer, prompts, images if kind == "lavin" else None)
    got = runtime.generate(prompts, images, STEPS)
    assert got == ref
    assert sum(len(t) for t in got) >= STEPS * len(examples) - 2  # hardly any EOS: ~32 tokens compared per row


def test_layout_from_the_manifest_equals_build_batch():
    folder = exported("lavin", "static")
    manifest = json.loads((folder / "manifest.json").read_text())
    tok = Tokenizer(folder / "tokenizer.model")
    examples = [(p, i is not None) for p, i in BATCH_3]
    ref = build_batch(tok, [(p, None, img) for p, img in examples], manifest["sequence"]["n_image_tokens"])
    got = build_layout(manifest["sequence"], [prompt_pieces(manifest["sequence"], lambda s: tok.encode(s, bos=False, eos=False),
                                                            p, img) for p, img in examples], [img for _, img in examples])
    for name in ("tokens", "positions", "key_mask", "prompt_mask", "modality_slot", "image_slots", "has_image"):
        np.testing.assert_array_equal(got[name], getattr(ref, name).numpy(), err_msg=name)


def test_text_layout_from_the_manifest_equals_left_pad():
    folder = exported("text", "static")
    manifest = json.loads((folder / "manifest.json").read_text())
    tok = Tokenizer(folder / "tokenizer.model")
    prompts = [p for p, _ in BATCH_3]
    tokens, positions, mask = encode_batch(tok, prompts)
    got = build_layout(manifest["sequence"], [([], tok.encode(p, bos=False, eos=False)) for p in prompts], [False] * 3)
    for name, ref in (("tokens", tokens), ("positions", positions), ("key_mask", mask), ("prompt_mask", mask)):
        np.testing.assert_array_equal(got[name], ref.numpy(), err_msg=name)
    with pytest.raises(ValueError, match="text-only model takes no image"):
        build_layout(manifest["sequence"], [([], [5])], [True])


def torchvision_style(image: Image.Image, size: int) -> np.ndarray:
    """LaVIN's transform written out as torchvision runs it on a PIL image: Resize (PIL bicubic), ToTensor
    (uint8 -> float, div(255)), Normalize (sub_(mean).div_(std)), all in float32 torch ops."""
    rgb = torch.from_numpy(np.array(image.convert("RGB").resize((size, size), Image.BICUBIC)))
    x = rgb.permute(2, 0, 1).float().div(255)
    return x.sub_(torch.tensor(IMAGENET_MEAN)[:, None, None]).div_(torch.tensor(IMAGENET_STD)[:, None, None]).numpy()


def test_preprocessing_from_the_manifest_equals_the_model_code_bit_for_bit():
    manifest = json.loads((exported("lavin", "static") / "manifest.json").read_text())
    gray = PHOTOS[0].convert("L").resize((50, 31))
    for photo in (*PHOTOS, gray):
        for size in (manifest["image"]["size"], 7, 224):
            want = torchvision_style(photo, size)
            np.testing.assert_array_equal(manifest_preprocess(photo, {**manifest["image"], "size": size}), want)
            np.testing.assert_array_equal(preprocess(photo, size).numpy(), want)


def test_limits_of_the_export_are_refused():
    runtime = OrtRuntime(exported("text", "static"))
    with pytest.raises(UsageError, match="more than the export's --max-seq 128"):
        runtime.generate(["word " * 60], [None], 100)
    with pytest.raises(UsageError, match="exceeds the export's --max-batch 4"):
        runtime.generate(["a"] * 5, [None] * 5, 2)


def test_run_into_writes_present_into_past_and_returns_only_the_rest():
    """The decode step through OrtRuntime.run_into: the caller's past buffers receive slot
    `length` (in place), the same as the copying default (Runtime.run_into over run)."""
    runtime = OrtRuntime(exported("text", "static"))
    kv, graph = runtime.manifest["state"]["kv"], runtime.manifest["graphs"]["decode"]
    gen = np.random.default_rng(0)
    feed = {"token": np.array([5]), "position": np.array([3]), "length": np.array(3),
            "key_mask": np.array([[True] * 4 + [False] * 2])}
    for t in graph["inputs"][4:]:
        shape = [{"batch": 1, "slots": 6}.get(d, d) for d in t["shape"]]
        feed[t["name"]] = gen.standard_normal(shape).astype(np.float32) * (t["name"] in kv["past"])
    copied = {n: a.copy() for n, a in feed.items()}
    buffers = {n: feed[n] for n in kv["past"]}
    out = runtime.run_into("decode", feed, dict(zip(kv["present"], kv["past"])))
    ref = super(OrtRuntime, runtime).run_into("decode", copied, dict(zip(kv["present"], kv["past"])))
    assert list(out) == list(ref) == ["logits"] and np.allclose(out["logits"], ref["logits"], atol=1e-6)
    for name in kv["past"]:
        assert feed[name] is buffers[name] and np.array_equal(feed[name], copied[name])
        assert not np.array_equal(feed[name][:, :, 3], np.zeros_like(feed[name][:, :, 3]))
