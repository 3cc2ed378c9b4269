"""Merged models against the unmerged adapter model they came from (eas_method.md §2)."""
import pytest
import torch

from eas.model.config import LlamaConfig
from eas.adapters.attach import EASConfig, add_adapters, mark_trainable, set_skipped
from eas.model.llama import Llama
from eas.adapters.calibrate import calibrate_routes, clear_routes
from eas.adapters.merge import merge
from eas.io.merged import load_merged, save_merged
from eas.adapters.pia import PIA
from test_pia import random_gains
from helpers import rel_err

SKIP = (1, 2)



def base_model(gen, **kw):
    return random_gains(Llama(LlamaConfig.named("test", **kw)).init_weights(gen), gen).eval()


def trained_like(model, gen):
    """Adapters as after training: non-zero up projections, routers and biases."""
    for m in model.modules():
        if isinstance(m, PIA):
            for p in m.parameters():
                p.data = torch.randn(p.shape, generator=gen) * 0.2
    return model


def prompt_batch(model, lengths, gen):
    """Left-padded random prompts of different lengths."""
    T = max(lengths)
    tokens = torch.randint(1, model.cfg.vocab_size, (len(lengths), T), generator=gen)
    visible = torch.tensor([[t >= T - n for t in range(T)] for n in lengths])
    positions = (visible.cumsum(1) - 1).clamp(min=0)
    return model.tok_embeddings(tokens), positions, visible


@torch.no_grad()
def greedy(model, embeds, positions, visible, steps=32):
    cache = model.new_cache(embeds.shape[0], embeds.shape[1] + steps)
    logits = [model.prefill(embeds, positions, visible, cache)]
    pos = positions[:, -1]
    tokens = []
    for _ in range(steps):
        tokens.append(logits[-1].argmax(-1))
        pos = pos + 1
        logits.append(model.decode_step(tokens[-1], pos, cache))
    return torch.stack(logits, 1), torch.stack(tokens, 1)


def eas_model(gen, skip=SKIP, unit="attention"):
    model = add_adapters(base_model(gen), EASConfig(adapter_dim=4, skip_dim=8, skip_layers=skip, unit=unit))
    return trained_like(model, gen).eval()


def test_identity_at_init(gen):
    base = base_model(gen)
    adapted = add_adapters(base_model(torch.Generator().manual_seed(0)), EASConfig(adapter_dim=4, skip_dim=8)).eval()
    emb, pos, vis = prompt_batch(base, [9, 5], gen)
    ref, ref_tokens = greedy(base, emb, pos, vis, steps=8)
    out, out_tokens = greedy(adapted, emb, pos, vis, steps=8)
    assert torch.equal(out_tokens, ref_tokens)
    assert rel_err(out, ref) < 1e-6


UNIT_CASES = [("attention", [11]), ("attention", [11, 4, 7, 9]), ("ffn", [11, 4, 7, 9]), ("layer", [11, 4, 7, 9])]


@pytest.mark.parametrize("unit,lengths", UNIT_CASES)
def test_dynamic_merge_equals_unmerged(unit, lengths, gen):
    model = eas_model(gen, unit=unit)
    merged = merge(model, "dynamic")
    emb, pos, vis = prompt_batch(model, lengths, gen)
    ref, ref_tokens = greedy(model, emb, pos, vis)
    out, out_tokens = greedy(merged, emb, pos, vis)
    assert torch.equal(out_tokens, ref_tokens)
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("unit,lengths", UNIT_CASES)
def test_static_merge_equals_unmerged_with_fixed_routes(unit, lengths, gen):
    model = eas_model(gen, unit=unit)
    emb, pos, vis = prompt_batch(model, [6, 8, 3], gen)
    constants = calibrate_routes(model, [(emb, pos, vis, vis)])
    # one active adapter per layer, plus PIA-S where an FFN is skipped beside a kept attention
    assert len(constants) == model.cfg.n_layers + (len(SKIP) if unit == "ffn" else 0)
    merged = merge(model, "static")
    emb, pos, vis = prompt_batch(model, lengths, gen)
    ref, ref_tokens = greedy(model, emb, pos, vis)
    out, out_tokens = greedy(merged, emb, pos, vis)
    assert torch.equal(out_tokens, ref_tokens)
    assert rel_err(out, ref) < 1e-5


def test_merged_model_is_plain_and_smaller(gen):
    model = eas_model(gen)
    cfg, r_a, r_s = model.cfg, 4, 8
    base_count = sum(p.numel() for n, p in model.named_parameters() if ".adapter_" not in n)
    emb, pos, vis = prompt_batch(model, [5, 7], gen)
    calibrate_routes(model, [(emb, pos, vis, vis)])
    for mode in ("static", "dynamic"):
        if mode == "dynamic":
            clear_routes(model)
        merged = merge(model, mode)
        names = [n for n, _ in merged.named_parameters()]
        assert not any("adapter" in n for n in names)
        assert all(merged.layers[i].attention is None for i in SKIP)
        attn = sum(p.numel() for p in model.layers[0].attention.parameters()) + cfg.dim  # + attention_norm
        qkv = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
        biases = (cfg.n_layers - len(SKIP)) * qkv + len(SKIP) * 2 * cfg.hidden_dim  # q/k/v kept, W1/W3 skipped
        if mode == "static":  # per-example bias generator of each skipped layer
            extras = len(SKIP) * (cfg.dim * r_s + r_s + 2 * cfg.hidden_dim * r_s)
        else:  # routed rank-2r corrections: down (+pool), router, up, route bias
            kept = (cfg.n_layers - len(SKIP)) * (cfg.dim * r_a + r_a + 2 * cfg.dim + 2 + qkv * 2 * r_a + qkv * 2)
            skipped = len(SKIP) * (2 * (cfg.dim * r_s + r_s) + 2 * cfg.dim + 2
                                   + 2 * cfg.hidden_dim * 2 * r_s + 2 * cfg.hidden_dim * 2)
            extras = kept + skipped
        expected = base_count - len(SKIP) * attn + biases + extras
        assert sum(p.numel() for p in merged.parameters()) == expected
        full_cache = model.new_cache(2, 16).nbytes
        assert merged.new_cache(2, 16).nbytes * cfg.n_layers == full_cache * (cfg.n_layers - len(SKIP))


def test_merge_twice_is_merge_once_and_roundtrips(gen, tmp_path):
    model = eas_model(gen)
    once = merge(model, "dynamic")
    twice = merge(once, "dynamic")
    s1, s2 = once.state_dict(), twice.state_dict()
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    save_merged(once, tmp_path / "merged.pt", tokenizer="tokenizer.model")
    loaded = load_merged(tmp_path / "merged.pt")
    emb, pos, vis = prompt_batch(model, [6, 3], gen)
    assert torch.equal(greedy(loaded, emb, pos, vis, 4)[0], greedy(once, emb, pos, vis, 4)[0])
    assert loaded.cfg.skip_layers == SKIP and loaded.tokenizer_ref == str(tmp_path / "tokenizer.model")
    old = torch.load(tmp_path / "merged.pt", weights_only=True)
    torch.save({**old, "version": 1}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="version 1; this code reads version 2"):
        load_merged(tmp_path / "old.pt")


def test_merge_leaves_the_source_model_alone(gen):
    """The merged copy must not adopt the source's Parameters nor flip their requires_grad
    (that once made a tuning run save the whole frozen base as 'adapters')."""
    model = mark_trainable(eas_model(gen))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    merged = merge(model, "dynamic")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    assert not {id(p) for p in merged.parameters()} & {id(p) for p in model.parameters()}


def test_merge_refuses_the_wrong_routing(gen):
    model = eas_model(gen)
    with pytest.raises(ValueError, match="calibrate_routes"):
        merge(model, "static")
    emb, pos, vis = prompt_batch(model, [5], gen)
    calibrate_routes(model, [(emb, pos, vis, vis)])
    with pytest.raises(ValueError, match="clear_routes"):
        merge(model, "dynamic")


def test_switching_skip_set_at_run_time(gen):
    model = eas_model(gen, skip=())
    emb, pos, vis = prompt_batch(model, [7], gen)
    full = greedy(model, emb, pos, vis, 2)[0]
    set_skipped(model, SKIP)
    skipped = greedy(model, emb, pos, vis, 2)[0]
    set_skipped(model, ())
    assert torch.equal(greedy(model, emb, pos, vis, 2)[0], full)
    assert rel_err(skipped, full) > 1e-3


@pytest.mark.parametrize("unit,absent_attention,absent_ffn", [("ffn", (), SKIP), ("layer", SKIP, SKIP)])
def test_ffn_and_layer_units_merge_to_smaller_models(unit, absent_attention, absent_ffn, gen, tmp_path):
    """A skipped FFN/layer is physically absent after the merge; only PIA-S's Δ stands in for it."""
    model = eas_model(gen, unit=unit)
    emb, pos, vis = prompt_batch(model, [6, 8], gen)
    calibrate_routes(model, [(emb, pos, vis, vis)])
    merged = merge(model, "static")
    assert merged.cfg.skip_layers == absent_attention and merged.cfg.skip_ffn_layers == absent_ffn
    for block in merged.layers:
        assert (block.feed_forward is None) == (block.layer in absent_ffn)
        assert (block.attention is None) == (block.layer in absent_attention)
        assert (block.residual_adapter is not None) == (block.layer in absent_ffn)
    full_cache = model.new_cache(2, 16).nbytes
    n = model.cfg.n_layers
    assert merged.new_cache(2, 16).nbytes * n == full_cache * (n - len(absent_attention))
    save_merged(merged, tmp_path / "merged.pt")
    loaded = load_merged(tmp_path / "merged.pt")
    emb, pos, vis = prompt_batch(model, [5, 9], gen)
    assert torch.equal(greedy(loaded, emb, pos, vis, 4)[0], greedy(merged, emb, pos, vis, 4)[0])
