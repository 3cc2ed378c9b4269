"""LaVIN sequence layout, masks and labels; padding invariance; generation vs full recomputation."""
import math

import pytest
import torch
import torch.nn.functional as F

from eas.model.config import LavinConfig, LlamaConfig, VisionConfig
from eas.model.generate import generate, nucleus_probs
from eas.model.lavin import IGNORE_INDEX, Lavin, lm_loss
from eas.model.llama import Llama
from eas.model.tokenizer import left_pad
from helpers import TOKENIZER_VOCAB, rel_err

VOCAB = TOKENIZER_VOCAB
CFG = LavinConfig(llama=LlamaConfig.named("test", vocab_size=VOCAB), vision=VisionConfig.named("test"))
EXAMPLES = [("What is the label for this image?\nResponse:", "airport", True),
            ("Hi", None, False),
            ("Name it:", "beach", True)]


@pytest.fixture(scope="module")
def model():
    return Lavin(CFG).init_weights(torch.Generator().manual_seed(0)).eval()


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(len(EXAMPLES), 3, 32, 32, generator=torch.Generator().manual_seed(1))



def test_layout_masks_and_labels(tok, model):
    batch = model.build_batch(tok, EXAMPLES[:2])
    img_prefix, txt_prefix = tok.encode("Image: ", False, False), tok.encode("Image: N/A", False, False)
    prompt0, answer0 = tok.encode(EXAMPLES[0][0], False, False), tok.encode("airport", False, True)
    prompt1 = tok.encode("Hi", False, False)
    # kinds: m = modality, t = text prompt (BOS, prefix, prompt), i = image, a = answer + EOS
    row0 = [("m", 0), ("t", 1)] + [("t", t) for t in img_prefix] + [("i", 0)] * 6 + \
           [("t", t) for t in prompt0] + [("a", t) for t in answer0]
    row1 = [("m", 0), ("t", 1)] + [("t", t) for t in txt_prefix + prompt1]
    T = len(row0)
    assert batch.tokens.shape == (2, T) and len(row1) < T
    row1 = [("p", 0)] * (T - len(row1)) + row1  # left padding
    for b, row in enumerate([row0, row1]):
        kinds = [k for k, _ in row]
        n_pad = kinds.count("p")
        assert batch.tokens[b].tolist() == [t for _, t in row]
        assert batch.positions[b].tolist() == [0] * n_pad + list(range(T - n_pad))
        assert batch.key_mask[b].tolist() == [k in "tia" for k in kinds]
        assert batch.prompt_mask[b].tolist() == [k in "mti" for k in kinds]
        assert batch.modality_slot[b].tolist() == [k == "m" for k in kinds]
        assert batch.image_slots[b].tolist() == [k == "i" for k in kinds]
        # logits at t are scored against the token at t + 1 when that token is an answer/EOS token
        expected = [row[t + 1][1] if t + 1 < T and kinds[t + 1] == "a" else IGNORE_INDEX for t in range(T)]
        assert batch.labels[b].tolist() == expected
    assert batch.has_image.tolist() == [True, False]
    assert batch.labels[0].tolist()[-1] == IGNORE_INDEX and answer0[-1] == tok.eos_id


def test_loss_is_next_token_cross_entropy_on_answers(tok, model, pixels):
    batch = model.build_batch(tok, [EXAMPLES[0], EXAMPLES[2]])
    with torch.no_grad():
        logits = model(batch, pixels[[0, 2]])
    terms = []
    for b in range(2):
        n_answer = len(tok.encode(EXAMPLES[2 * b][1], False, True))
        T = batch.tokens.shape[1]
        for t in range(T - n_answer, T):  # answer + EOS slots, each predicted from slot t - 1
            terms.append(-F.log_softmax(logits[b, t - 1], -1)[batch.tokens[b, t]])
    assert math.isclose(lm_loss(logits, batch.labels).item(), torch.stack(terms).mean().item(), rel_tol=1e-5)


def test_embed_places_modality_tokens_and_images(tok, model, pixels):
    batch = model.build_batch(tok, EXAMPLES)
    with torch.no_grad():
        h = model.embed(batch, pixels)
        images = model.adapter_proj(model.visual(pixels, CFG.tap_blocks))
    for b, (_, _, has_image) in enumerate(EXAMPLES):
        slots = batch.image_slots[b].nonzero().flatten()
        start = slots[0].item() if has_image else None
        first = batch.modality_slot[b].nonzero().item()
        assert torch.equal(h[b, first], model.adapter_modality_embedding.weight[int(has_image)])
        if has_image:
            assert torch.allclose(h[b, start:start + 6], images[b], atol=1e-6)
        text = batch.key_mask[b] & ~batch.image_slots[b]
        assert torch.equal(h[b, text], model.llama.tok_embeddings.weight[batch.tokens[b, text]])


def test_text_only_batch_needs_no_pixels(tok, model, pixels):
    batch = model.build_batch(tok, [EXAMPLES[1]])
    with torch.no_grad():
        assert torch.equal(model(batch), model(batch, pixels[:1]))
    with pytest.raises(ValueError, match="no pixels"):
        model(model.build_batch(tok, EXAMPLES[:1]))


def test_left_padded_batch_matches_each_example_alone(tok, model, pixels):
    batch = model.build_batch(tok, EXAMPLES)
    with torch.no_grad():
        batched, _ = model.prefill(batch, pixels, model.llama.new_state(len(EXAMPLES), batch.tokens.shape[1]))
        full = model(batch, pixels)[:, -1]
        for b, example in enumerate(EXAMPLES):
            one = model.build_batch(tok, [example])
            alone, _ = model.prefill(one, pixels[b:b + 1], model.llama.new_state(1, one.tokens.shape[1]))
            assert rel_err(batched[b], alone[0]) < 1e-5
            assert rel_err(full[b], alone[0]) < 1e-5


def test_modality_token_is_invisible_to_later_tokens(tok, model, pixels):
    batch = model.build_batch(tok, EXAMPLES)
    with torch.no_grad():
        before = model(batch, pixels)
        saved = model.adapter_modality_embedding.weight.clone()
        model.adapter_modality_embedding.weight.add_(torch.randn(saved.shape, generator=torch.Generator().manual_seed(2)))
        after = model(batch, pixels)
        model.adapter_modality_embedding.weight.copy_(saved)
    others = batch.key_mask
    assert (after[others] - before[others]).abs().max().item() < 1e-6
    assert (after[batch.modality_slot] - before[batch.modality_slot]).abs().max().item() > 1e-2


def greedy_by_recomputation(model: Lavin, tok, example, pixels, n: int) -> list[int]:
    """Argmax loop that re-runs the whole sequence, unpadded, without a cache, for every token."""
    one = model.build_batch(tok, [example])
    prompt = model.embed(one, pixels)
    out = []
    for _ in range(n):
        extra = model.llama.tok_embeddings(torch.tensor(out, dtype=torch.long))[None]
        h = torch.cat([prompt, extra], 1)
        T = h.shape[1]
        visible = torch.ones(1, T, dtype=torch.bool)
        visible[0, 0] = False  # the modality slot
        logits = model.llama.output(model.llama.hidden(h, torch.arange(T)[None], visible))
        out.append(logits[0, -1].argmax().item())
    return out


def test_lavin_greedy_generation_matches_recomputation(tok, model, pixels):
    batch = model.build_batch(tok, EXAMPLES)
    got = model.generate(batch, pixels, 6, eos_id=-1)
    with torch.no_grad():
        for b, example in enumerate(EXAMPLES):
            assert got[b] == greedy_by_recomputation(model, tok, example, pixels[b:b + 1], 6)


def test_plain_llama_greedy_generation_matches_recomputation():
    llama = Llama(CFG.llama).init_weights(torch.Generator().manual_seed(3)).eval()
    prompts = [[1, 17, 33, 250, 8], [1, 99], [1, 5, 6, 7]]
    tokens, positions, key_mask = left_pad(prompts)
    assert key_mask.tolist()[1] == [False, False, False, True, True]
    assert positions.tolist()[1] == [0, 0, 0, 0, 1]
    got = generate(llama, llama.tok_embeddings(tokens), positions, key_mask, 5, eos_id=-1)
    with torch.no_grad():
        for p, g in zip(prompts, got):
            seq = list(p)
            for _ in range(5):
                seq.append(llama(torch.tensor([seq]))[0, -1].argmax().item())
            assert g == seq[len(p):]


def test_eos_stops_each_example_and_the_loop(tok, model, pixels):
    batch = model.build_batch(tok, EXAMPLES)
    free = model.generate(batch, pixels, 8, eos_id=-1)
    eos = free[0][2]
    expected = [s[:s.index(eos)] if eos in s else s for s in free]
    assert model.generate(batch, pixels, 8, eos_id=eos) == expected

    one = model.build_batch(tok, EXAMPLES[:1])
    calls = []
    decode = model.llama.decode_step
    model.llama.decode_step = lambda *a: calls.append(1) or decode(*a)
    try:
        assert model.generate(one, pixels[:1], 8, eos_id=eos) == [expected[0]]
    finally:
        del model.llama.decode_step
    assert len(calls) == free[0].index(eos)  # no decode step after the EOS


def test_nucleus_filter_and_seeded_sampling(tok, model, pixels):
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert torch.allclose(nucleus_probs(logits, 1.0, 0.7), torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    tempered = torch.tensor([0.5, 0.3, 0.15, 0.05]) ** 0.5
    assert torch.allclose(nucleus_probs(logits, 2.0, 1.0), tempered[None] / tempered.sum())
    batch = model.build_batch(tok, EXAMPLES)

    def sample(seed, **kw):
        return model.generate(batch, pixels, 5, eos_id=-1, temperature=0.8,
                              generator=torch.Generator().manual_seed(seed), **kw)

    assert sample(0) == sample(0)
    assert sample(0, top_p=1e-6) == model.generate(batch, pixels, 5, eos_id=-1)  # only the top token survives
