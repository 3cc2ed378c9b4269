"""Loaders for Meta shards, Hugging Face safetensors and the own format, against independent forwards.

The fixtures write a tiny random LLaMA the way each release does. The Meta shards are also run by
a model-parallel forward (per-rank heads, summed row-parallel outputs) and the HF tensors by a
rotate-half forward, so the split dimensions and the q/k permutation are checked against those
conventions rather than only round-tripped.
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from eas.errors import CheckpointError
from eas.io.checkpoint import load_model, save_model
from eas.model.config import LlamaConfig
from eas.model.llama import Llama
from eas.io.load_llama import load_llama
from helpers import hf_tensors, rel_err, write_meta

REPO = Path(__file__).resolve().parents[2]




@pytest.fixture
def model(gen):
    return Llama(LlamaConfig.named("test")).init_weights(gen).eval()


@pytest.fixture
def tokens(gen):
    return torch.randint(0, 96, (2, 10), generator=gen)


def logits(m, tokens):
    with torch.no_grad():
        return m(tokens)


# ---- writers in each release format ------------------------------------------------------------

def write_hf(model, folder: Path, shards: int = 1, **config) -> dict[str, torch.Tensor]:
    folder.mkdir()
    c, tensors = model.cfg, hf_tensors(model)
    (folder / "config.json").write_text(json.dumps(dict(
        model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=c.dim, intermediate_size=c.hidden_dim,
        num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, num_hidden_layers=c.n_layers,
        rms_norm_eps=c.norm_eps, vocab_size=c.vocab_size, rope_theta=c.rope_theta, hidden_act="silu",
        max_position_embeddings=c.max_seq_len, **{"tie_word_embeddings": False, **config})))
    if shards == 1:
        save_file(tensors, folder / "model.safetensors")
    else:
        names = sorted(tensors)
        weight_map = {}
        for i in range(shards):
            file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = names[i::shards]
            save_file({n: tensors[n] for n in part}, folder / file)
            weight_map.update(dict.fromkeys(part, file))
        index = {"metadata": {}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "tokenizer.model").write_bytes(b"sentencepiece stand-in")
    return tensors


# ---- independent forwards -------------------------------------------------------------------------

def rms(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def causal_attention(q, k, v):
    """q [B,T,H,D], k/v [B,T,KV,D] -> [B,T,H*D]; explicit softmax, repeated kv heads."""
    rep = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    T = q.shape[1]
    scores = scores.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool)), float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).flatten(2)


def angles(cfg, T):
    freqs = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim)
    return torch.outer(torch.arange(T, dtype=torch.float64), freqs)[None, :, None]  # [1, T, 1, D/2]


def meta_parallel_forward(shards, cfg, tokens):
    """Meta's model-parallel LLaMA, one rank per shard: gathered embedding widths, per-rank heads and
    FFN columns, row-parallel outputs summed (the all-reduce), gathered vocabulary logits."""
    s64 = [{k: v.double() for k, v in s.items()} for s in shards]
    B, T = tokens.shape
    rot = torch.polar(torch.ones_like(angles(cfg, T)), angles(cfg, T))

    def rope(x):  # interleaved pairs as complex numbers
        return torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2)).contiguous()) * rot).flatten(-2)

    x = torch.cat([s["tok_embeddings.weight"][tokens] for s in s64], -1)
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        xn = rms(x, s64[0][p + "attention_norm.weight"], cfg.norm_eps)
        for s in s64:
            q = rope((xn @ s[p + "attention.wq.weight"].T).unflatten(-1, (-1, cfg.head_dim)))
            k = rope((xn @ s[p + "attention.wk.weight"].T).unflatten(-1, (-1, cfg.head_dim)))
            v = (xn @ s[p + "attention.wv.weight"].T).unflatten(-1, (-1, cfg.head_dim))
            x = x + causal_attention(q, k, v) @ s[p + "attention.wo.weight"].T
        h = rms(x, s64[0][p + "ffn_norm.weight"], cfg.norm_eps)
        for s in s64:
            f = p + "feed_forward."
            x = x + (F.silu(h @ s[f + "w1.weight"].T) * (h @ s[f + "w3.weight"].T)) @ s[f + "w2.weight"].T
    x = rms(x, s64[0]["norm.weight"], cfg.norm_eps)
    return torch.cat([x @ s["output.weight"].T for s in s64], -1)


def hf_rotate_half_forward(t, cfg, tokens):
    """Hugging Face's LLaMA on its own tensors: rotate-half RoPE with duplicated frequency halves."""
    t = {k: v.double() for k, v in t.items()}
    T = tokens.shape[1]
    emb = torch.cat([angles(cfg, T)] * 2, -1)
    cos, sin = emb.cos(), emb.sin()

    def rope(x):
        x1, x2 = x.chunk(2, -1)
        return x * cos + torch.cat([-x2, x1], -1) * sin

    x = t["model.embed_tokens.weight"][tokens]
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        xn = rms(x, t[p + "input_layernorm.weight"], cfg.norm_eps)
        q = rope((xn @ t[p + "self_attn.q_proj.weight"].T).unflatten(-1, (-1, cfg.head_dim)))
        k = rope((xn @ t[p + "self_attn.k_proj.weight"].T).unflatten(-1, (-1, cfg.head_dim)))
        v = (xn @ t[p + "self_attn.v_proj.weight"].T).unflatten(-1, (-1, cfg.head_dim))
        x = x + causal_attention(q, k, v) @ t[p + "self_attn.o_proj.weight"].T
        h = rms(x, t[p + "post_attention_layernorm.weight"], cfg.norm_eps)
        x = x + (F.silu(h @ t[p + "mlp.gate_proj.weight"].T) * (h @ t[p + "mlp.up_proj.weight"].T)) \
            @ t[p + "mlp.down_proj.weight"].T
    return rms(x, t["model.norm.weight"], cfg.norm_eps) @ t["lm_head.weight"].T


# ---- loading ------------------------------------------------------------------------------------

def test_meta_shards_load_and_match_model_parallel_forward(model, tokens, tmp_path):
    shards = write_meta(model, tmp_path / "7B")
    loaded, tokenizer = load_llama(tmp_path / "7B")
    ref = logits(model, tokens)
    assert rel_err(meta_parallel_forward(shards, model.cfg, tokens), ref) < 1e-5
    assert rel_err(logits(loaded, tokens), ref) < 1e-6
    assert loaded.cfg == model.cfg  # vocab_size -1 in params.json resolved from the embedding
    assert tokenizer == tmp_path / "tokenizer.model"


@pytest.mark.parametrize("shards", [1, 2])
def test_hf_loads_and_matches_rotate_half_forward(model, tokens, tmp_path, shards):
    raw = write_hf(model, tmp_path / "hf", shards)
    loaded, tokenizer = load_llama(tmp_path / "hf")
    ref = logits(model, tokens)
    assert rel_err(hf_rotate_half_forward(raw, model.cfg, tokens), ref) < 1e-5
    assert rel_err(logits(loaded, tokens), ref) < 1e-6
    assert tokenizer == tmp_path / "hf" / "tokenizer.model"


def test_hf_tied_embeddings(model, tokens, tmp_path):
    model.output.weight.data.copy_(model.tok_embeddings.weight)
    write_hf(model, tmp_path / "hf", tie_word_embeddings=True)
    path = tmp_path / "hf" / "model.safetensors"
    save_file({k: v for k, v in hf_tensors(model).items() if k != "lm_head.weight"}, path)
    loaded, _ = load_llama(tmp_path / "hf")
    assert rel_err(logits(loaded, tokens), logits(model, tokens)) < 1e-6
    assert loaded.output.weight.data_ptr() != loaded.tok_embeddings.weight.data_ptr()


def test_loaders_build_on_meta_and_convert_per_parameter(model, tmp_path, monkeypatch):
    write_meta(model, tmp_path / "meta")
    write_hf(model, tmp_path / "hf")
    built_on = []
    init = Llama.__init__

    def spy(self, cfg):
        init(self, cfg)
        built_on.append(self.tok_embeddings.weight.device.type)

    monkeypatch.setattr(Llama, "__init__", spy)
    for folder in ("meta", "hf"):
        loaded, _ = load_llama(tmp_path / folder, dtype=torch.bfloat16)
        for name, p in loaded.named_parameters():
            assert p.device.type == "cpu" and p.dtype == torch.bfloat16, name
            assert torch.equal(p, model.get_parameter(name).to(torch.bfloat16)), name
        assert loaded.rope_cos.device.type == "cpu" and loaded.rope_cos.dtype == torch.float32
        assert torch.equal(loaded.rope_cos, model.rope_cos)
    assert built_on == ["meta", "meta"]


def test_own_format_round_trip(gen, tokens, tmp_path):
    cfg = LlamaConfig.named("test", no_attention=(1,), qkv_bias=True)
    model = Llama(cfg).init_weights(gen).eval()
    torch.nn.init.normal_(model.layers[0].attention.wq.bias, generator=gen)
    tok = tmp_path / "tokenizer.model"
    tok.write_bytes(b"sentencepiece stand-in")
    save_model(model, tmp_path / "own", tokenizer=tok)
    loaded = load_model(tmp_path / "own")
    assert loaded.cfg == cfg and loaded.layers[1].attention is None
    assert rel_err(logits(loaded, tokens), logits(model, tokens)) < 1e-6
    via_llama, tokenizer = load_llama(tmp_path / "own")
    assert rel_err(logits(via_llama, tokens), logits(model, tokens)) < 1e-6
    assert tokenizer.read_bytes() == tok.read_bytes()

    save_model(model.to(torch.bfloat16), tmp_path / "bf16")
    kept = load_model(tmp_path / "bf16")
    assert all(p.dtype == torch.bfloat16 for p in kept.parameters())
    assert torch.equal(kept.output.weight, model.output.weight)
    assert load_model(tmp_path / "bf16", dtype=torch.float32).output.weight.dtype == torch.float32


def test_converter_cli_on_meta_release(model, tokens, tmp_path):
    write_meta(model, tmp_path / "7B")
    done = subprocess.run([sys.executable, "weights/convert_llama.py", str(tmp_path / "7B"), str(tmp_path / "out"),
                           "--dtype", "fp32"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "meta checkpoint" in done.stdout and "tokenizer.model" in done.stdout
    converted = load_model(tmp_path / "out")
    assert rel_err(logits(converted, tokens), logits(model, tokens)) < 1e-6
    assert (tmp_path / "out" / "tokenizer.model").read_bytes() == (tmp_path / "tokenizer.model").read_bytes()


# ---- failures name the culprit ------------------------------------------------------------------

def rewrite_meta(folder, edit):
    for f in sorted(folder.glob("consolidated.*.pth")):
        shard = torch.load(f, weights_only=True)
        edit(f.name, shard)
        torch.save(shard, f)


def test_meta_errors_name_the_key(model, tmp_path):
    write_meta(model, tmp_path / "m")
    rewrite_meta(tmp_path / "m", lambda name, s: s.pop("layers.2.feed_forward.w2.weight"))
    with pytest.raises(CheckpointError, match=r"missing keys: layers\.2\.feed_forward\.w2\.weight"):
        load_llama(tmp_path / "m")

    rewrite_meta(tmp_path / "m", lambda name, s: s.update({"layers.0.attention.lora.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"layers\.0\.attention\.lora\.weight"):
        load_llama(tmp_path / "m")

    write_meta(model, tmp_path / "w")
    rewrite_meta(tmp_path / "w", lambda name, s: s.update({"layers.1.attention.wv.weight": torch.zeros(8, 64)}))
    with pytest.raises(CheckpointError, match=r"layers\.1\.attention\.wv\.weight: checkpoint \(16, 64\) vs model"):
        load_llama(tmp_path / "w")

    write_meta(model, tmp_path / "n")
    rewrite_meta(tmp_path / "n", lambda name, s: s["norm.weight"].add_(1.0 if name.endswith("01.pth") else 0.0))
    with pytest.raises(CheckpointError, match=r"consolidated\.01\.pth: replicated norm\.weight differs"):
        load_llama(tmp_path / "n")

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "params.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"empty: has params\.json but no consolidated"):
        load_llama(tmp_path / "empty")


def test_hf_errors_name_the_key(model, tmp_path):
    write_hf(model, tmp_path / "h")
    tensors = hf_tensors(model)
    tensors["model.layers.1.mlp.up_proj.weight"] = torch.zeros(176, 60)
    del tensors["lm_head.weight"]
    save_file(tensors, tmp_path / "h" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing keys: output\.weight") as err:
        load_llama(tmp_path / "h")
    assert "layers.1.feed_forward.w3.weight: checkpoint (176, 60) vs model (176, 64)" in str(err.value)

    tensors = hf_tensors(model)
    tensors["model.layers.0.self_attn.q_proj.lora_A.weight"] = torch.zeros(8)
    save_file(tensors, tmp_path / "h" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"unexpected keys: model\.layers\.0\.self_attn\.q_proj\.lora_A\.weight"):
        load_llama(tmp_path / "h")

    write_hf(model, tmp_path / "s", shards=2)
    (tmp_path / "s" / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model-00002-of-00002\.safetensors"):
        load_llama(tmp_path / "s")


def test_own_format_errors_name_the_key(model, tmp_path):
    save_model(model, tmp_path / "own")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["layers.0.attention.lora_a"] = torch.zeros(3)
    save_file(state, tmp_path / "own" / "model.safetensors")
    expected = r"model\.safetensors: unexpected keys: layers\.0\.attention\.lora_a$"
    with pytest.raises(CheckpointError, match=expected):
        load_model(tmp_path / "own")


def test_missing_config_names_the_directory(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(CheckpointError, match=r"nothing: no params\.json .* or config\.json"):
        load_llama(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match=r"nothing: no config\.json"):
        load_model(tmp_path / "nothing")


def test_failed_save_leaves_no_partial_file(model, tmp_path, monkeypatch):
    save_model(model, tmp_path / "own")
    before = {p.name: p.read_bytes() for p in (tmp_path / "own").iterdir()}

    def full_disk(tensors, path, metadata=None):
        Path(path).write_bytes(b"half a header")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("eas.io.checkpoint.save_file", full_disk)
    with pytest.raises(CheckpointError, match=r"cannot write .*own/model\.safetensors: No space left"):
        save_model(Llama(LlamaConfig.named("test")), tmp_path / "own")
    assert {p.name: p.read_bytes() for p in (tmp_path / "own").iterdir()} == before
