"""Merging a whole LaVIN model (ViT PIA-A into in_proj, LLaMA PIAs) against its unmerged form."""

import pytest
import torch

from eas.adapters.calibrate import calibrate_routes, clear_routes
from eas.model.config import LavinConfig, LlamaConfig, VisionConfig
from eas.adapters.attach import EASConfig, add_adapters
from eas.model.lavin import Lavin
from eas.adapters.merge import merge
from eas.io.merged import load_merged, save_merged
from eas.adapters.pia import PIA
from eas.data.aid import AID_FORMAT
from eas.errors import UsageError
from helpers import TOKENIZER_VOCAB, cancel_input, rel_err

CFG = LavinConfig(llama=LlamaConfig.named("test", vocab_size=TOKENIZER_VOCAB), vision=VisionConfig.named("test"))
EXAMPLES = [("What is the label for this image?\nResponse:", None, True), ("Hi there", None, False),
            ("Name it:", None, True)]


@pytest.fixture(scope="module")
def eas_lavin():
    gen = torch.Generator().manual_seed(0)
    model = add_adapters(Lavin(CFG).init_weights(gen), EASConfig(adapter_dim=4, skip_dim=8, skip_layers=(0, 2)))
    for m in model.modules():
        if isinstance(m, PIA):
            for p in m.parameters():
                p.data = torch.randn(p.shape, generator=gen) * 0.2
    with torch.no_grad():  # ViT norms and q/k/v biases away from their init, where a static shift lands
        for name, p in model.visual.named_parameters():
            if name.endswith(("ln_1.weight", "ln_1.bias", "in_proj_bias")):
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()



@torch.no_grad()
def logits_and_tokens(model, batch, pixels, steps=12):
    state = model.llama.new_state(batch.tokens.shape[0], batch.tokens.shape[1] + steps)
    first, state = model.prefill(batch, pixels, state)
    logits = [first]
    pos, tokens = batch.positions[:, -1], []
    for _ in range(steps):
        tokens.append(logits[-1].argmax(-1))
        pos = pos + 1
        step, state = model.llama.decode_step(tokens[-1], pos, state)
        logits.append(step)
    return torch.stack(logits, 1), torch.stack(tokens, 1)


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_lavin_merge_matches_unmerged(mode, eas_lavin, tok, tmp_path):
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    batch = eas_lavin.build_batch(tok, EXAMPLES)
    clear_routes(eas_lavin)
    if mode == "static":
        calibrate_routes(eas_lavin, [(batch, pixels)], forward=lambda m, b: m(*b))
    merged = merge(eas_lavin, mode)
    ref, ref_tokens = logits_and_tokens(eas_lavin, batch, pixels)
    out, out_tokens = logits_and_tokens(merged, batch, pixels)
    assert torch.equal(out_tokens, ref_tokens)
    assert rel_err(out, ref) < 1e-5
    assert not any(isinstance(m, PIA) for m in merged.modules())
    assert all(merged.llama.layers[i].attention is None for i in (0, 2))
    save_merged(merged, tmp_path / "merged.pt", AID_FORMAT, tokenizer="weights/tiny/tokenizer.model")
    loaded = load_merged(tmp_path / "merged.pt")
    assert torch.equal(logits_and_tokens(loaded, batch, pixels)[0], out)
    assert loaded.merge_info["mode"] == mode and loaded.tokenizer_ref == str(tmp_path / "weights/tiny/tokenizer.model")
    if mode == "static":
        assert len(loaded.merge_info["router_constants"]) == CFG.llama.n_layers + CFG.vision.layers


def test_a_vit_blocks_static_fold_is_bounded_by_the_stored_dtype():
    """A ViT block's PIA-A cancelling 0.99 of its input (100x): refused for a merge stored in float16,
    though the model computes in float32 (the ViT's fold is bounded like the LLM's)."""
    gen = torch.Generator().manual_seed(3)
    model = add_adapters(Lavin(CFG).init_weights(gen), EASConfig(adapter_dim=4, skip_dim=8, skip_layers=(0, 2)))
    for m in model.modules():
        if isinstance(m, PIA):
            m.fixed_route = torch.tensor([0.5, 0.5])
    cancel_input(model.visual.transformer.resblocks[1].adapter_attn, 0.99, gen)
    with pytest.raises(UsageError, match=r"a ViT block's PIA-A: .*amplify it 100x .*at most 64x .* in float16"):
        merge(model, "static", torch.float16)
    merge(model, "static")  # float32: accepted
