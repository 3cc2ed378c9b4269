"""Merged models against the unmerged adapter model they came from (eas_method.md §2)."""
import copy

import numpy as np
import pytest
import torch

from eas.model.config import LlamaConfig
from eas.adapters.attach import EASConfig, add_adapters, mark_trainable, set_skipped
from eas.model.llama import Llama
from eas.adapters.calibrate import calibrate_routes, clear_routes
from eas.adapters.merge import merge
from eas.io.merged import as_stored, load_merged, save_merged
from eas.adapters.pia import PIA
from eas.data.aid import AID_FORMAT
from eas.errors import CheckpointError, UsageError
from eas.model.state import kv_bytes
from helpers import cancel_input, random_gains, rel_err

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
    state = model.new_state(embeds.shape[0], embeds.shape[1] + steps)
    first, state = model.prefill(embeds, positions, visible, state)
    logits = [first]
    pos = positions[:, -1]
    tokens = []
    for _ in range(steps):
        tokens.append(logits[-1].argmax(-1))
        pos = pos + 1
        step, state = model.decode_step(tokens[-1], pos, state)
        logits.append(step)
    return torch.stack(logits, 1), torch.stack(tokens, 1)


def eas_model(gen, skip=SKIP, unit="attention", **base):
    model = add_adapters(base_model(gen, **base), EASConfig(adapter_dim=4, skip_dim=8, skip_layers=skip, unit=unit))
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


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_merge_keeps_the_q_k_v_biases_of_a_base_that_has_them(mode, gen):
    """A base with q/k/v biases (qkv_bias): both merges keep them beside the folded adapters."""
    model = eas_model(gen, qkv_bias=True)
    with torch.no_grad():
        for block in model.layers:
            for lin in (block.attention.wq, block.attention.wk, block.attention.wv):
                lin.bias.normal_(generator=gen)
    emb, pos, vis = prompt_batch(model, [6, 4], gen)
    if mode == "static":
        calibrate_routes(model, [(emb, pos, vis, vis)])
    merged = merge(model, mode)
    assert merged.layers[0].attention.wq.bias is not None
    ref, ref_tokens = greedy(model, emb, pos, vis)
    out, out_tokens = greedy(merged, emb, pos, vis)
    assert torch.equal(out_tokens, ref_tokens) and rel_err(out, ref) < 1e-5


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
        if mode == "static":  # a norm shift per kept layer; per skipped layer its generator (down, proj, shift)
            extras = (cfg.n_layers - len(SKIP)) * cfg.dim + len(SKIP) * (2 * cfg.dim * r_s + r_s + cfg.dim)
        else:  # routed rank-2r corrections: down (+pool), router, up, route bias
            kept = (cfg.n_layers - len(SKIP)) * (cfg.dim * r_a + r_a + 2 * cfg.dim + 2 + qkv * 2 * r_a + qkv * 2)
            skipped = len(SKIP) * (2 * (cfg.dim * r_s + r_s) + 2 * cfg.dim + 2
                                   + 2 * cfg.hidden_dim * 2 * r_s + 2 * cfg.hidden_dim * 2)
            extras = kept + skipped
        expected = base_count - len(SKIP) * attn + extras  # no biases: the base has none
        assert sum(p.numel() for p in merged.parameters()) == expected
        full_kv = kv_bytes(model.new_state(2, 16))
        assert kv_bytes(merged.new_state(2, 16)) * cfg.n_layers == full_kv * (cfg.n_layers - len(SKIP))


def test_static_fold_of_one_layer_against_numpy(gen):
    """W' = W + (W M_u) M_d for a kept layer's wq, and the attention norm's shift s solving
    (I + M_u M_d) s = M_u β_d + β_u (a dense C x C solve), computed in numpy from the adapter's raw
    tensors (block-diagonal up projections assembled by hand)."""
    model = eas_model(gen)
    emb, pos, vis = prompt_batch(model, [6, 4], gen)
    calibrate_routes(model, [(emb, pos, vis, vis)])
    block, merged = model.layers[0], merge(model, "static").layers[0]
    pia = block.adapter_attn
    w = pia.fixed_route.double().numpy()

    def dense(up):
        wt = up.weight.detach().double().numpy()
        C, half = wt.shape[0] // 2, wt.shape[1]
        out = np.zeros((2 * C, 2 * half))
        out[:C, :half], out[C:, half:] = wt[:C], wt[C:]
        return out

    m_u = pia.scale * (w[0] * dense(pia.up_b) + w[1] * dense(pia.up_d))
    beta_u = pia.scale * (w[0] * pia.up_b.bias.detach().double().numpy() + w[1] * pia.up_d.bias.detach().double().numpy())
    m_d, beta_d = pia.down.weight.detach().double().numpy(), pia.down.bias.detach().double().numpy()
    W = block.attention.wq.weight.detach().double().numpy()
    np.testing.assert_allclose(merged.attention.wq.weight.detach().double().numpy(), W + (W @ m_u) @ m_d, rtol=0, atol=1e-5)
    shift = np.linalg.solve(np.eye(W.shape[1]) + m_u @ m_d, m_u @ beta_d + beta_u)
    np.testing.assert_allclose(merged.attention_norm.shift.detach().double().numpy(), shift, rtol=0, atol=1e-6)
    assert merged.attention.wq.bias is None and np.abs(shift).max() > 1e-2
    assert np.abs(W @ m_u @ m_d).max() > 1e-2  # the adapter really changed the weight


LIMITS = {torch.float16: 64, torch.bfloat16: 8, torch.float32: 524288}  # keeping 5 significant bits


@pytest.mark.parametrize("cancel, dtype, stored, refused", [
    (1.0, torch.float32, torch.float32, True), (0.99, torch.float32, torch.float16, True),
    (0.99, torch.bfloat16, torch.float32, True), (0.99, torch.float32, torch.float32, False),
    (0.95, torch.float32, torch.bfloat16, True), (0.95, torch.float32, torch.float16, False),
    (0.5, torch.float32, torch.bfloat16, False)])
def test_static_fold_refuses_to_amplify_an_adapter_that_cancels_its_input(gen, cancel, dtype, stored, refused):
    """M_d M_u = -cancel·I_r: I + M is singular at 1, and moving the constant onto the norm
    amplifies it 1 / (1 - cancel): 100x at 0.99, refused in float16 (at most 64x), accepted in
    float32 (at most 524288x); 20x at 0.95 (the default job once folded at 16.9x), refused in
    bfloat16 (at most 8x), accepted in float16; singular, refused in float32. A refusal names the
    adapter; the bound is the less precise dtype's of storage and compute (a bfloat16 model stored in
    float32). An accepted merge still computes what the unmerged model does, and stored in 16 bits
    it is within 2x the error of the unmerged model stored alike (measured: 1.4x at 20x, 2.6x at 50x
    and 6.3x at 100x in float16 and in bfloat16)."""
    model = eas_model(gen).to(dtype)
    pia = model.layers[0].adapter_attn
    cancel_input(pia, cancel, gen)
    for other in model.modules():
        if isinstance(other, PIA) and other is not pia:
            other.fixed_route = torch.tensor([0.5, 0.5])
    if refused:
        with pytest.raises(UsageError, match=r"layer 0's PIA-A: I \+ M is \(nearly\) singular.*amplify it"
                                             rf".*at most {min(LIMITS[dtype], LIMITS[stored])}x .* stored in"):
            merge(model, "static", stored)
        return
    tokens = torch.randint(1, model.cfg.vocab_size, (2, 7), generator=gen)
    with torch.no_grad():
        merged, exact = merge(model, "static", stored), model(tokens)
        assert rel_err(merged(tokens), exact) < 1e-5
        if stored != torch.float32:
            stored_err = rel_err(as_stored(merged, stored)(tokens), exact)
            assert stored_err < 2 * rel_err(as_stored(copy.deepcopy(model), stored)(tokens), exact)


def test_a_skipped_layers_static_fold_is_bounded_by_the_stored_dtype(gen):
    """PIA-S (its down projection halved in the fold) cancelling 0.99 of its input: 100x, refused for
    a merge stored in float16, accepted and exact in float32."""
    model = eas_model(gen)
    pia = model.layers[SKIP[0]].adapter_skip
    cancel_input(pia, 0.99, gen, half=True)
    for other in model.modules():
        if isinstance(other, PIA) and other is not pia:
            other.fixed_route = torch.tensor([0.5, 0.5])
    with pytest.raises(UsageError, match=rf"layer {SKIP[0]}'s PIA-S: .*amplify it 100x .*at most 64x .* in float16"):
        merge(model, "static", torch.float16)
    tokens = torch.randint(1, model.cfg.vocab_size, (2, 7), generator=gen)
    with torch.no_grad():
        assert rel_err(merge(model, "static", torch.float32)(tokens), model(tokens)) < 1e-5


def test_a_static_merge_keeps_its_fold_gain_and_refuses_a_dtype_too_coarse_for_it(gen, tmp_path):
    """A float32 static merge that folded at 100x records it; merged.pt cannot then be written or
    loaded in float16 (at most 64x), only as float32. A dynamic merge records no gain."""
    model = eas_model(gen)
    pia = model.layers[0].adapter_attn
    cancel_input(pia, 0.99, gen)
    for other in model.modules():
        if isinstance(other, PIA) and other is not pia:
            other.fixed_route = torch.tensor([0.5, 0.5])
    merged = merge(model, "static")
    assert merged.merge_info["fold_gain"] == pytest.approx(100, rel=1e-3)
    path = tmp_path / "merged.pt"
    with pytest.raises(UsageError, match=rf"saving {path}: .* 100x, too much to keep 5 significant bits in float16 \(at most 64x\)"):
        save_merged(merged, path, AID_FORMAT, dtype=torch.float16)
    assert not path.exists()
    save_merged(merged, path, AID_FORMAT)
    with pytest.raises(UsageError, match=rf"loading {path}: .* 100x, too much .* in float16"):
        load_merged(path, dtype=torch.float16)
    assert load_merged(path, dtype=torch.float32).merge_info["fold_gain"] == pytest.approx(100, rel=1e-3)
    clear_routes(model)
    assert merge(model, "dynamic").merge_info["fold_gain"] is None


def test_merge_of_a_merged_model_is_a_copy_and_merged_pt_roundtrips(gen, tmp_path):
    model = eas_model(gen)
    once = merge(model, "dynamic")
    again = merge(once, "dynamic")
    assert again is not once
    emb, pos, vis = prompt_batch(model, [6, 3], gen)
    assert torch.equal(greedy(again, emb, pos, vis, 4)[0], greedy(once, emb, pos, vis, 4)[0])
    save_merged(once, tmp_path / "merged.pt", AID_FORMAT, tokenizer="tokenizer.model")
    loaded = load_merged(tmp_path / "merged.pt")
    assert torch.equal(greedy(loaded, emb, pos, vis, 4)[0], greedy(once, emb, pos, vis, 4)[0])
    assert loaded.cfg.no_attention == SKIP and loaded.tokenizer_ref == str(tmp_path / "tokenizer.model")
    assert loaded.prompt_format == AID_FORMAT
    old = torch.load(tmp_path / "merged.pt", weights_only=True)
    # version 3 had no prompt format: refused with the way to re-merge, not read without one
    torch.save({k: v for k, v in {**old, "version": 3}.items() if k != "prompt_format"}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="version 3; this code reads version 5: re-merge it .* --resume"):
        load_merged(tmp_path / "old.pt")
    torch.save({**old, "prompt_format": {**AID_FORMAT.to_json(), "template": "no slot"}}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad.pt: .*prompt format.*must hold \{question\} exactly once"):
        load_merged(tmp_path / "bad.pt")
    (tmp_path / "junk.pt").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_merged(tmp_path / "junk.pt")


def test_merged_pt_stores_the_requested_dtype(gen, tmp_path):
    merged = merge(eas_model(gen), "dynamic")
    save_merged(merged, tmp_path / "m.pt", AID_FORMAT, dtype=torch.float16)
    loaded = load_merged(tmp_path / "m.pt")
    assert {p.dtype for p in loaded.parameters()} == {torch.float16}
    assert torch.equal(loaded.layers[0].attention.wq.weight, merged.layers[0].attention.wq.weight.half())
    assert load_merged(tmp_path / "m.pt", dtype=torch.float32).layers[0].attention.wq.weight.dtype == torch.float32


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_decode_step_exports_with_tensor_state_only(mode, gen):
    """prefill/decode_step take and return tensors only: torch.export traces the merged decode step,
    and the exported program gives the eager logits and the same updated state."""
    model = eas_model(gen)
    emb, pos, vis = prompt_batch(model, [5, 3], gen)
    if mode == "static":
        calibrate_routes(model, [(emb, pos, vis, vis)])
    merged = merge(model, mode)
    with torch.no_grad():
        _, state = merged.prefill(emb, pos, vis, merged.new_state(2, 9))
    assert all(isinstance(t, torch.Tensor) for t in state.values())
    assert not any(n.startswith(("k.1", "v.1", "k.2", "v.2")) for n in state)  # skipped layers hold no K/V
    per_example = {"static": "layers.1.ffn_shift", "dynamic": "layers.0.attn_delta.route"}[mode]
    assert per_example in state

    class Step(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, tokens, positions, state):
            return self.m.decode_step(tokens, positions, state)

    tokens, positions = torch.tensor([3, 4]), pos[:, -1] + 1
    clone = {k: v.clone() for k, v in state.items()}
    program = torch.export.export(Step(merged), (tokens, positions, clone))
    with torch.no_grad():
        ref_logits, ref_state = merged.decode_step(tokens, positions, {k: v.clone() for k, v in state.items()})
        out_logits, out_state = program.module()(tokens, positions, {k: v.clone() for k, v in state.items()})
    assert rel_err(out_logits, ref_logits) < 1e-6
    assert out_state.keys() == ref_state.keys()
    assert all(torch.equal(out_state[k], ref_state[k]) for k in ref_state)


def test_merge_leaves_the_source_model_alone(gen):
    """The merged copy must not adopt the source's Parameters nor flip their requires_grad (the
    tuner saves every parameter that requires grad as an adapter)."""
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
    assert merged.cfg.no_attention == absent_attention and merged.cfg.no_ffn == absent_ffn
    for block in merged.layers:
        assert (block.feed_forward is None) == (block.layer in absent_ffn)
        assert (block.attention is None) == (block.layer in absent_attention)
        assert hasattr(block, "residual_adapter") == (block.layer in absent_ffn)
    full_kv = kv_bytes(model.new_state(2, 16))
    n = model.cfg.n_layers
    assert kv_bytes(merged.new_state(2, 16)) * n == full_kv * (n - len(absent_attention))
    save_merged(merged, tmp_path / "merged.pt", AID_FORMAT)
    loaded = load_merged(tmp_path / "merged.pt")
    emb, pos, vis = prompt_batch(model, [5, 9], gen)
    assert torch.equal(greedy(loaded, emb, pos, vis, 4)[0], greedy(merged, emb, pos, vis, 4)[0])
