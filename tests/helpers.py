"""What several test files share: error measures, the straight-line LLaMA reference, random set-ups."""
from __future__ import annotations

import json
import math
import pydoc_data.topics
from pathlib import Path

import torch
from torch import nn


# The session tokenizer's training text and size (conftest.py's `tok`); 400 pieces, since byte
# fallback alone needs 259.
TOKENIZER_CORPUS = list(pydoc_data.topics.topics.values())[:8]
TOKENIZER_VOCAB = 400


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (Frobenius), in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def random_gains(model, gen):
    """Norm gains away from 1, so that γ_att and γ_ffn land in the right places or the test fails."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.5 * torch.randn(p.shape, generator=gen))
    return model


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


def naive_logits(model, tokens: torch.Tensor, prompt: torch.Tensor | None = None) -> torch.Tensor:
    """Straight-line LLaMA: complex-number RoPE, explicit softmax, repeated KV heads, no cache.

    With EAS adapters attached (eas/adapters/blocks.py's table): PIA-A before the attention of kept layers;
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
            if getattr(blk, "adapter_attn", None) is not None:
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
# ---- checkpoints written the way each release does ---------------------------------------------

HF_LAYER_NAMES = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
                  "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
                  "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj",
                  "feed_forward.w3": "mlp.up_proj", "attention_norm": "input_layernorm",
                  "ffn_norm": "post_attention_layernorm"}


def hf_tensors(model, prefix: str = "model.", head: str = "lm_head.weight") -> dict[str, torch.Tensor]:
    """HF names, q/k rows permuted as HF's convert_llama_weights_to_hf.py does; `prefix` and `head`
    place them as LLaVA's layouts nest them."""
    c = model.cfg

    def permute(w, heads):
        return w.view(heads, c.head_dim // 2, 2, c.dim).transpose(1, 2).reshape(w.shape)

    out = {f"{prefix}embed_tokens.weight": model.tok_embeddings.weight, f"{prefix}norm.weight": model.norm.weight,
           head: model.output.weight}
    rotary_heads = {"attention.wq": c.n_heads, "attention.wk": c.n_kv_heads}
    for i, blk in enumerate(model.layers):
        for ours, theirs in HF_LAYER_NAMES.items():
            w = blk.get_parameter(ours + ".weight")
            w = permute(w, rotary_heads[ours]) if ours in rotary_heads else w
            out[f"{prefix}layers.{i}.{theirs}.weight"] = w
        out[f"{prefix}layers.{i}.self_attn.rotary_emb.inv_freq"] = torch.rand(c.head_dim // 2)
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


# fairscale layout of Meta's release: embedding width, column-parallel rows, row-parallel columns.
MP_DIM = {"tok_embeddings": 1, "wq": 0, "wk": 0, "wv": 0, "wo": 1, "w1": 0, "w3": 0, "w2": 1, "output": 0}


def write_meta(model, folder: Path, n_shards: int = 2) -> list[dict]:
    folder.mkdir()
    shards = [{"rope.freqs": torch.randn(model.cfg.head_dim // 2)} for _ in range(n_shards)]
    for k, v in model.state_dict().items():
        dim = MP_DIM.get(k.rsplit(".", 2)[-2])
        pieces = [v] * n_shards if dim is None else v.chunk(n_shards, dim)
        for shard, piece in zip(shards, pieces):
            shard[k] = piece.clone()  # a saved view would carry the whole storage
    for i, shard in enumerate(shards):
        torch.save(shard, folder / f"consolidated.{i:02d}.pth")
    c = model.cfg
    (folder / "params.json").write_text(json.dumps(
        dict(dim=c.dim, multiple_of=c.multiple_of, n_heads=c.n_heads, n_kv_heads=c.n_kv_heads,
             n_layers=c.n_layers, norm_eps=c.norm_eps, vocab_size=-1, max_seq_len=c.max_seq_len)))
    (folder.parent / "tokenizer.model").write_bytes(b"sentencepiece stand-in")  # Meta: beside 7B/
    return shards


def openai_clip_state(vit: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of an OpenAI CLIP file holding `vit` as its visual tower, next to text-tower keys."""
    state = {f"visual.{k}": v.clone() for k, v in vit.state_dict().items()}
    return state | {"logit_scale": torch.tensor(4.6), "token_embedding.weight": torch.zeros(10, 8)}


def save_hf_weights(tensors: dict[str, torch.Tensor], folder: Path, shards: int = 1, fmt: str = "safetensors") -> None:
    """Write tensors as a Hugging Face folder does: model.safetensors / pytorch_model.bin, or
    `shards` files named model-0000i-of-0000n.* with a weight_map index."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().clone().contiguous() for k, v in tensors.items()}

    def write(part, path):
        save_file(part, path) if fmt == "safetensors" else torch.save(part, path)

    stem, ext = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
    if shards == 1:
        write(tensors, folder / f"{stem}.{ext}")
        return
    names, weight_map = sorted(tensors), {}
    for i in range(shards):
        file = f"{stem}-{i + 1:05d}-of-{shards:05d}.{ext}"
        write({n: tensors[n] for n in names[i::shards]}, folder / file)
        weight_map.update(dict.fromkeys(names[i::shards], file))
    (folder / f"{stem}.{ext}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def hf_clip_tensors(vit: nn.Module, prefix: str = "", projection: bool = True) -> dict[str, torch.Tensor]:
    """The tensors of a Hugging Face CLIP vision tower holding `vit`, named and laid out as
    transformers' CLIPVisionTransformer (separate q/k/v projections, visual_projection [out, width])."""
    sd, t = vit.state_dict(), f"{prefix}vision_model."
    out = {f"{t}embeddings.class_embedding": sd["class_embedding"],
           f"{t}embeddings.patch_embedding.weight": sd["conv1.weight"],
           f"{t}embeddings.position_embedding.weight": sd["positional_embedding"],
           f"{t}embeddings.position_ids": torch.arange(sd["positional_embedding"].shape[0])[None],
           **{f"{t}pre_layrnorm.{p}": sd[f"ln_pre.{p}"] for p in ("weight", "bias")},
           **{f"{t}post_layernorm.{p}": sd[f"ln_post.{p}"] for p in ("weight", "bias")}}
    for i in range(vit.cfg.layers):
        ours, theirs = f"transformer.resblocks.{i}.", f"{t}encoder.layers.{i}."
        for p in ("weight", "bias"):
            for name, piece in zip("qkv", sd[f"{ours}attn.in_proj_{p}"].chunk(3)):
                out[f"{theirs}self_attn.{name}_proj.{p}"] = piece
            for a, b in [("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                         ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")]:
                out[f"{theirs}{b}.{p}"] = sd[f"{ours}{a}.{p}"]
    if projection:
        out[f"{prefix}visual_projection.weight"] = sd["proj"].T
    return out


def hf_clip_config(cfg) -> dict:
    return {"hidden_size": cfg.width, "intermediate_size": round(cfg.width * cfg.mlp_ratio), "image_size": cfg.image_size,
            "patch_size": cfg.patch_size, "num_attention_heads": cfg.heads, "num_hidden_layers": cfg.layers,
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "model_type": "clip_vision_model"}


@torch.no_grad()
def cancel_input(pia, cancel: float, gen, half: bool = False) -> None:
    """Set a PIA so that M_d M_u = -cancel·I_r under a fixed route (half: a PIA-S, whose static fold
    halves M_d): I + M is singular at 1, and its static fold amplifies by 1 / (1 - cancel)."""
    pia.up_b.weight.normal_(generator=gen)
    pia.up_d.weight.copy_(pia.up_b.weight)
    pia.fixed_route = torch.tensor([0.3, 0.7])
    mix = pia.pool_mix if half else 1.0
    pia.down.weight.copy_(-cancel / mix * torch.linalg.pinv(pia.scale * pia.up_b.dense().double()))
