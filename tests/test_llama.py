"""The cached prefill/decode path against one full pass and a naive, cache-free reference."""
import math

import pytest
import torch

from eas.model.config import LlamaConfig
from eas.model.llama import Llama
from helpers import rel_err


def naive_pia_delta(pia, xn: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    """PIA's Δ (its output minus the identity) from its raw tensors, as eas_method.md §1.2/1.4
    write it: τ = 10 and the ½ mix are the spec's constants (not read from the module), pooling is
    done after the down projection, and the grouped up projections are applied group by group."""
    w_prompt = prompt[..., None].float() / prompt.sum(1)[:, None, None]
    route = torch.softmax(((xn * w_prompt).sum(1) @ pia.router.weight.T + pia.router.bias) / 10.0, -1)
    h = xn @ pia.down.weight.T + pia.down.bias
    if pia.down_pool is not None:
        pooled = ((xn @ pia.down_pool.weight.T + pia.down_pool.bias) * w_prompt).sum(1)
        h = 0.5 * (h + pooled[:, None])

    def grouped(up):
        C, r = up.weight.shape[0], h.shape[-1]
        halves = [h[..., g * r // 2:(g + 1) * r // 2] @ up.weight[g * C // 2:(g + 1) * C // 2].T for g in (0, 1)]
        return torch.cat(halves, -1) + up.bias

    w = route[:, None]
    return pia.scale * (w[..., :1] * grouped(pia.up_b) + w[..., 1:] * grouped(pia.up_d))


def naive_logits(model: Llama, tokens: torch.Tensor, prompt: torch.Tensor | None = None) -> torch.Tensor:
    """Straight-line LLaMA: complex-number RoPE, explicit softmax, repeated KV heads, no cache.

    With EAS adapters attached (eas_model.py's table): PIA-A before the attention of kept layers;
    for a skipped unit, x + FFN(γ_ffn ⊙ PIA-S(RMSNorm_att(x))) (attention), h + Δ(RMSNorm_ffn(h))
    (ffn) or x + Δ(RMSNorm_att(x)) (layer); pooling over ``prompt`` [B, T].
    """
    cfg = model.cfg
    B, T = tokens.shape
    hd = cfg.head_dim
    freqs = 1.0 / cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    rot = torch.polar(torch.ones(T, hd // 2, dtype=torch.float64), torch.outer(torch.arange(T, dtype=torch.float64), freqs))

    def rope(x):  # [B, T, H, D]
        xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], hd // 2, 2))
        return torch.view_as_real(xc * rot[None, :, None]).reshape(x.shape).float()

    def norm(x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.norm_eps) * w

    def ffn(f, h):
        return (torch.nn.functional.silu(h @ f.w1.weight.T) * (h @ f.w3.weight.T)) @ f.w2.weight.T

    x = model.tok_embeddings.weight[tokens]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    prompt = torch.ones(B, T, dtype=torch.bool) if prompt is None else prompt
    eas = getattr(model, "eas", None)
    for blk in model.layers:
        unit = eas.unit if eas is not None and blk.layer in eas.skip_layers else None
        if unit == "layer":
            x = x + naive_pia_delta(blk.adapter_skip, norm(x, blk.attention_norm.weight), prompt)
            continue
        if unit == "attention":
            xn = norm(x, blk.attention_norm.weight)
            z = xn + naive_pia_delta(blk.adapter_skip, xn, prompt)
            x = x + ffn(blk.feed_forward, z * blk.ffn_norm.weight)
            continue
        if blk.attention is not None:
            a = blk.attention
            xn = norm(x, blk.attention_norm.weight)
            if blk.adapter_attn is not None:
                xn = xn + naive_pia_delta(blk.adapter_attn, xn, prompt)
            q = rope((xn @ a.wq.weight.T).view(B, T, cfg.n_heads, hd))
            k = rope((xn @ a.wk.weight.T).view(B, T, cfg.n_kv_heads, hd))
            v = (xn @ a.wv.weight.T).view(B, T, cfg.n_kv_heads, hd)
            rep = cfg.n_heads // cfg.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
            scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
            probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
            x = x + torch.einsum("bhqk,bkhd->bqhd", probs, v).reshape(B, T, -1) @ a.wo.weight.T
        if unit == "ffn":
            x = x + naive_pia_delta(blk.adapter_skip, norm(x, blk.ffn_norm.weight), prompt)
        elif blk.feed_forward is not None:
            x = x + ffn(blk.feed_forward, norm(x, blk.ffn_norm.weight))
    return norm(x, model.norm.weight) @ model.output.weight.T



@pytest.mark.parametrize("kv_heads,skip,skip_ffn", [(4, (), ()), (2, (), ()), (2, (1, 2), ()), (1, (0,), ()),
                                                   (2, (1,), (1, 3))])
def test_cached_decode_matches_full_pass_and_naive(kv_heads, skip, skip_ffn, gen):
    cfg = LlamaConfig.named("test", n_kv_heads=kv_heads, skip_layers=skip, skip_ffn_layers=skip_ffn)
    model = Llama(cfg).init_weights(gen).eval()
    tokens = torch.randint(0, cfg.vocab_size, (2, 12), generator=gen)
    with torch.no_grad():
        full = model(tokens)
        naive = naive_logits(model, tokens)
        cache = model.new_cache(2, 12)
        pos = torch.arange(12).expand(2, 12)
        steps = [model.prefill(model.tok_embeddings(tokens[:, :5]), pos[:, :5], torch.ones(2, 5, dtype=torch.bool), cache)]
        for t in range(5, 12):
            steps.append(model.decode_step(tokens[:, t], pos[:, t], cache))
    cached = torch.stack(steps, 1)
    assert rel_err(full, naive) < 1e-5
    assert rel_err(cached, full[:, 4:]) < 1e-5


def test_left_padding_does_not_change_logits(gen):
    cfg = LlamaConfig.named("test")
    model = Llama(cfg).init_weights(gen).eval()
    seq = torch.randint(1, cfg.vocab_size, (1, 7), generator=gen)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), seq], 1)
    visible = torch.tensor([[False] * 3 + [True] * 7])
    positions = (visible.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = model(seq)[:, -1]
        out = model(padded, positions, visible)[:, -1]
    assert rel_err(out, ref) < 1e-5


def test_kv_cache_holds_only_kept_layers():
    full = Llama(LlamaConfig.named("test")).new_cache(3, 40)
    for k in (1, 2, 3):
        cfg = LlamaConfig.named("test", skip_layers=tuple(range(k)))
        cache = Llama(cfg).new_cache(3, 40)
        assert cache.nbytes * cfg.n_layers == full.nbytes * (cfg.n_layers - k)
        assert sorted(cache.k) == list(range(k, cfg.n_layers))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="skip_layers"):
        LlamaConfig.named("test", skip_layers=(9,))
    with pytest.raises(ValueError, match="n_kv_heads"):
        LlamaConfig.named("test", n_kv_heads=3)
    assert LlamaConfig.named("llama-7b").hidden_dim == 11008
