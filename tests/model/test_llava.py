"""LLaVA-1.5 wiring: expand2square, the mlp2x_gelu projector, the vicuna_v1 template and image-token
placement, each against a reference written from LLaVA's description; merged == unmerged."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from eas.adapters.attach import EASConfig, add_adapters
from eas.adapters.calibrate import calibrate_routes, clear_routes
from eas.adapters.merge import merge
from eas.adapters.pia import PIA
from eas.model.config import CLIP_MEAN, CLIP_STD, LlamaConfig, LlavaConfig, VisionConfig
from eas.model.image import expand2square, llava_preprocess
from eas.model.lavin import IGNORE_INDEX
from eas.model.llava import IMAGE, Llava
from helpers import TOKENIZER_VOCAB, rel_err

CFG = LlavaConfig(llama=LlamaConfig.named("test", vocab_size=TOKENIZER_VOCAB, max_seq_len=512),
                  vision=VisionConfig.named("test"))
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the user's questions.")
EXAMPLES = [("What is the label for this image?\nAnswer the question using a single word.", "airport", True),
            ("Hi", None, False), ("Name it.", "beach", True)]


@pytest.fixture(scope="module")
def model():
    return Llava(CFG).init_weights(torch.Generator().manual_seed(0)).eval()


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(len(EXAMPLES), 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("size", [(5, 3), (2, 6), (4, 4)])
def test_expand2square_centres_on_mean_colour(size):
    w, h = size
    arr = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    out = np.asarray(expand2square(Image.fromarray(arr), (122, 116, 104)))
    side = max(w, h)
    expected = np.tile(np.array([122, 116, 104], dtype=np.uint8), (side, side, 1))
    top, left = (side - h) // 2, (side - w) // 2
    expected[top:top + h, left:left + w] = arr
    assert np.array_equal(out, expected)


def test_llava_preprocess_pads_then_normalises_with_clip_statistics():
    arr = np.random.default_rng(1).integers(0, 256, (2, 4, 3), dtype=np.uint8)
    x = llava_preprocess(Image.fromarray(arr), 4, CLIP_MEAN, CLIP_STD)  # 4x4 after padding: no resampling
    pad = np.array([int(m * 255) for m in CLIP_MEAN], dtype=np.float64)  # LLaVA's tuple(int(x*255) for x in mean)
    square = np.concatenate([np.tile(pad, (1, 4, 1)), arr, np.tile(pad, (1, 4, 1))])
    ref = (square / 255 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    assert torch.allclose(x, torch.tensor(ref, dtype=torch.float32).permute(2, 0, 1), atol=1e-6)


def test_projector_is_linear_gelu_linear(model, gen):
    x = torch.randn(2, 5, CFG.vision.width, generator=gen)
    p = model.adapter_projector
    h = x @ p.linear_1.weight.T + p.linear_1.bias
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # exact GELU, as nn.GELU() in mlp2x_gelu
    assert rel_err(p(x), h @ p.linear_2.weight.T + p.linear_2.bias) < 1e-6


def test_vicuna_template_and_image_slots(tok, model):
    batch = model.build_batch(tok, EXAMPLES[:2])
    n = CFG.n_image_tokens
    assert n == 16 and CFG.feature_blocks == CFG.vision.layers - 1
    for b, (question, answer, has_image) in enumerate(EXAMPLES[:2]):
        valid = batch.key_mask[b]
        ids, slots, prompt = batch.tokens[b][valid], batch.image_slots[b][valid], batch.prompt_mask[b][valid]
        assert ids[0] == tok.bos_id and batch.positions[b][valid].tolist() == list(range(len(ids)))
        assert int(slots.sum()) == (n if has_image else 0)
        text = tok.decode(ids[1:][~slots[1:] & prompt[1:]].tolist())
        if has_image:
            first = int(slots.nonzero()[0])
            assert tok.decode(ids[1:first].tolist()) == f"{SYSTEM} USER: "
            assert tok.decode(ids[first + n:int(prompt.sum())].tolist()) == f"\n{question} ASSISTANT:"
        else:
            assert text == f"{SYSTEM} USER: {question} ASSISTANT:"
        labels = batch.labels[b][valid]
        supervised = labels[labels != IGNORE_INDEX].tolist()
        assert supervised == ([] if answer is None else tok.encode(answer, False, True))
    assert batch.modality_slot.sum() == 0 and torch.equal(batch.key_mask, batch.tokens.ne(0) | batch.image_slots)
    with pytest.raises(ValueError, match=IMAGE):
        model.build_batch(tok, [(f"{IMAGE} twice {IMAGE}", None, True)])


def test_logits_equal_per_example_reference(tok, model, pixels):
    """Padded batch vs each example alone, its embeddings assembled by hand: text pieces around the
    projected patch tokens (CLS dropped) of the penultimate layer."""
    batch = model.build_batch(tok, EXAMPLES)
    with torch.no_grad():
        logits = model(batch, pixels)
        for b, (_, _, has_image) in enumerate(EXAMPLES):
            valid = batch.key_mask[b]
            ids, slots = batch.tokens[b][valid], batch.image_slots[b][valid]
            h = model.llama.tok_embeddings(ids)
            if has_image:
                feats = model.vision_tower.hidden(pixels[b:b + 1], CFG.vision.layers - 1)[0, 1:]
                h[slots] = model.adapter_projector(feats)
            T = len(ids)
            ref = model.llama.output(model.llama.hidden(h[None], torch.arange(T)[None], torch.ones(1, T, dtype=torch.bool)))
            assert rel_err(logits[b][valid], ref[0]) < 1e-5


@torch.no_grad()
def greedy(model, batch, pixels, steps=10):
    state = model.llama.new_state(batch.tokens.shape[0], batch.tokens.shape[1] + steps)
    logits, state = model.prefill(batch, pixels, state)
    out, pos = [logits], batch.positions[:, -1]
    for _ in range(steps):
        pos = pos + 1
        logits, state = model.llama.decode_step(out[-1].argmax(-1), pos, state)
        out.append(logits)
    return torch.stack(out, 1)


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_llava_merge_equals_unmerged(mode, tok, pixels):
    gen = torch.Generator().manual_seed(2)
    eas = add_adapters(Llava(CFG).init_weights(gen), EASConfig(adapter_dim=4, skip_dim=8, skip_layers=(1, 3))).eval()
    for m in eas.modules():
        if isinstance(m, PIA):
            for p in m.parameters():
                p.data = torch.randn(p.shape, generator=gen) * 0.2
    assert not any(isinstance(m, PIA) for m in eas.vision_tower.modules())  # LLaVA-EAS: the LLM only
    batch = eas.build_batch(tok, EXAMPLES)
    clear_routes(eas)
    if mode == "static":
        calibrate_routes(eas, [(batch, pixels)], forward=lambda m, b: m(*b))
    merged = merge(eas, mode)
    ref, out = greedy(eas, batch, pixels), greedy(merged, batch, pixels)
    assert torch.equal(out.argmax(-1), ref.argmax(-1))
    assert rel_err(out, ref) < 1e-5
    assert isinstance(merged, Llava) and all(merged.llama.layers[i].attention is None for i in (1, 3))
    assert not any(isinstance(m, PIA) for m in merged.modules())
    assert torch.equal(merged.adapter_projector.linear_2.weight, eas.adapter_projector.linear_2.weight)
