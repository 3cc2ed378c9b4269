"""Load LLaMA weights as released: Meta's model-parallel shards, Hugging Face folders (safetensors or .bin), or ours.

Every path builds the model on the meta device, checks names and shapes against it from file
headers alone, then fills it one parameter at a time, converted to the target dtype and device as
it is read: peak memory stays near one model in that dtype (7B in bf16 loads in 24 GB).
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from eas.errors import CheckpointError, TokenizerError
from eas.io.checkpoint import CONFIG_FILE, TOKENIZER_FILE, check_state, load_model, load_state_strict
from eas.io.files import read_json
from eas.io.hf_files import WeightFiles
from eas.model.config import LlamaConfig, check_llama3_rope, load_config
from eas.model.llama import Llama

# Dimension along which Meta's model parallelism (fairscale) splits each weight: ParallelEmbedding
# splits the embedding width, ColumnParallelLinear the output rows, RowParallelLinear the input
# columns. None: replicated on every shard.
META_SPLIT_DIM = {"tok_embeddings": 1, "wq": 0, "wk": 0, "wv": 0, "wo": 1, "w1": 0, "w3": 0, "w2": 1,
                  "output": 0, "attention_norm": None, "ffn_norm": None, "norm": None}
META_IGNORED = {"rope.freqs"}  # LLaMA-1 saved its RoPE table; ours is rebuilt by init_buffers
META_REQUIRED = ("dim", "n_layers", "n_heads", "multiple_of", "norm_eps")
META_OPTIONAL = ("n_kv_heads", "vocab_size", "ffn_dim_multiplier", "rope_theta", "max_seq_len")  # ModelArgs fields

HF_NAMES = [(re.compile(pattern), meta) for pattern, meta in [
    (r"model\.embed_tokens\.weight", "tok_embeddings.weight"),
    (r"model\.norm\.weight", "norm.weight"),
    (r"lm_head\.weight", "output.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.([qkvo])_proj\.weight", r"layers.\1.attention.w\2.weight"),
    (r"model\.layers\.(\d+)\.mlp\.gate_proj\.weight", r"layers.\1.feed_forward.w1.weight"),
    (r"model\.layers\.(\d+)\.mlp\.down_proj\.weight", r"layers.\1.feed_forward.w2.weight"),
    (r"model\.layers\.(\d+)\.mlp\.up_proj\.weight", r"layers.\1.feed_forward.w3.weight"),
    (r"model\.layers\.(\d+)\.input_layernorm\.weight", r"layers.\1.attention_norm.weight"),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", r"layers.\1.ffn_norm.weight"),
]]
HF_IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")  # some exports store HF's RoPE table
HF_TOKENIZER = "tokenizer.json"


def _read_object(path: Path) -> dict:
    data = read_json(path, "checkpoint file", CheckpointError)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def detect_format(path: str | Path) -> str:
    """'meta' (params.json), 'hf' (Hugging Face config.json) or 'eas' (our config.json)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory (expected a LLaMA checkpoint folder)")
    if (path / "params.json").is_file():
        return "meta"
    if (path / CONFIG_FILE).is_file():
        data = _read_object(path / CONFIG_FILE)
        if "type" in data:
            return "eas"
        if "model_type" in data or "hidden_size" in data:
            return "hf"
        raise CheckpointError(f"{path / CONFIG_FILE}: neither an eas config ('type') nor a Hugging Face "
                              f"one ('model_type', 'hidden_size')")
    raise CheckpointError(f"{path}: no params.json (Meta) or {CONFIG_FILE} (Hugging Face or eas) found")


def load_llama(path: str | Path, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> tuple[Llama, Path | None]:
    """Load a LLaMA checkpoint folder of any supported format; returns (model, tokenizer.model or None)."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "meta":
        model = load_meta(path, dtype, device)
    elif fmt == "hf":
        model = load_hf(path, dtype, device)
    else:
        cfg = load_config(path / CONFIG_FILE)
        if not isinstance(cfg, LlamaConfig):
            raise CheckpointError(f"{path}: holds a {type(cfg).__name__} model, not a LLaMA; "
                                  f"use eas.io.checkpoint.load_model")
        model = load_model(path, dtype, device)
    return model, find_tokenizer(path, fmt)


def find_tokenizer(path: Path, fmt: str) -> Path | None:
    """The SentencePiece tokenizer.model of a checkpoint folder, None when there is none; a folder
    whose only tokenizer is a Hugging Face tokenizer.json (Llama-3 and later) is refused by name."""
    # Meta's release keeps one tokenizer.model beside the 7B/, 13B/ ... folders.
    candidates = [path / TOKENIZER_FILE] + ([path.parent / TOKENIZER_FILE] if fmt == "meta" else [])
    found = next((c for c in candidates if c.is_file()), None)
    if found is None and (path / HF_TOKENIZER).is_file():
        raise TokenizerError(f"{path} has only {HF_TOKENIZER}, not a SentencePiece {TOKENIZER_FILE}: "
                             f"only SentencePiece tokenizers (LLaMA-1/2, Vicuna) are supported")
    return found


def _fill(cfg: LlamaConfig, shapes: dict, tensors, source: str, dtype: torch.dtype) -> Llama:
    """Check ``shapes`` against a meta-device model, then load the (lazily produced) ``tensors``."""
    with torch.device("meta"):
        model = Llama(cfg)
    check_state(model, shapes, source)
    load_state_strict(model, dict(tensors), source, dtype)
    model.init_buffers()
    return model


# ---- Meta ---------------------------------------------------------------------------------------

def meta_config(params: dict, vocab_size: int, source: Path) -> LlamaConfig:
    missing = [k for k in META_REQUIRED if k not in params]
    unknown = params.keys() - set(META_REQUIRED) - set(META_OPTIONAL)
    if missing or unknown:
        raise CheckpointError(f"{source}: missing keys {missing}, unsupported keys {sorted(unknown)}")
    fields = {k: params[k] for k in META_REQUIRED + META_OPTIONAL if params.get(k) is not None}
    fields["vocab_size"] = vocab_size
    try:
        return LlamaConfig(**fields)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from e


def _open_meta_shards(path: Path) -> tuple[list[Path], list[dict]]:
    files = sorted(path.glob("consolidated.*.pth"))
    names = [f"consolidated.{i:02d}.pth" for i in range(len(files))]
    if not files:
        raise CheckpointError(f"{path}: has params.json but no consolidated.NN.pth shards")
    if sorted(f.name for f in files) != names:
        raise CheckpointError(f"{path}: shards {[f.name for f in files]} are not {names[0]}..{names[-1]}")
    files = [path / n for n in names]
    shards = []
    for f in files:
        try:  # mmap: tensors stay on disk until each parameter is merged
            shard = torch.load(f, mmap=True, weights_only=True, map_location="cpu")
        except (OSError, RuntimeError, pickle.UnpicklingError) as e:
            raise CheckpointError(f"{f}: cannot read as a PyTorch checkpoint: {e}") from e
        if not isinstance(shard, dict) or not all(isinstance(t, torch.Tensor) for t in shard.values()):
            raise CheckpointError(f"{f}: expected a dict of tensors")
        shards.append(shard)
    return files, shards


def _meta_layout(files: list[Path], shards: list[dict]) -> dict[str, tuple[int | None, tuple[int, ...]]]:
    """Per key: split dimension and merged shape, after checking every shard agrees."""
    layout = {}
    for key in sorted(set().union(*shards) - META_IGNORED):
        module = key.rsplit(".", 2)[-2] if key.endswith(".weight") else None
        if module not in META_SPLIT_DIM:
            raise CheckpointError(f"{files[0].parent}: unexpected key {key} (not a LLaMA parameter)")
        absent = [f.name for f, s in zip(files, shards) if key not in s]
        if absent:
            raise CheckpointError(f"{files[0].parent}: key {key} missing from {absent}")
        dim, shapes = META_SPLIT_DIM[module], [tuple(s[key].shape) for s in shards]
        fixed = [tuple(d for i, d in enumerate(sh) if i != dim) for sh in shapes]
        if len(set(fixed)) > 1 or (dim is not None and len(shapes[0]) <= dim):
            raise CheckpointError(f"{files[0].parent}: {key} has shard shapes {shapes}, which do not "
                                  f"concatenate along dim {dim}")
        merged = list(shapes[0])
        if dim is not None:
            merged[dim] = sum(sh[dim] for sh in shapes)
        layout[key] = (dim, tuple(merged))
    return layout


def _merge_meta(key, dim, shape, files, shards, dtype, device) -> torch.Tensor:
    pieces = [s[key] for s in shards]
    if dim is None:
        for f, p in zip(files[1:], pieces[1:]):
            if not torch.equal(p, pieces[0]):
                raise CheckpointError(f"{f}: replicated {key} differs from {files[0].name}")
        return pieces[0].to(device=device, dtype=dtype, copy=True)
    # Copy each piece into its slice of the final tensor: no full-size intermediate in the file dtype.
    out = torch.empty(shape, dtype=dtype, device=device)
    for part, p in zip(out.split([p.shape[dim] for p in pieces], dim), pieces):
        part.copy_(p)
    return out


def load_meta(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Llama:
    """Meta release folder: params.json + consolidated.NN.pth model-parallel shards."""
    path = Path(path)
    params = _read_object(path / "params.json")
    files, shards = _open_meta_shards(path)
    layout = _meta_layout(files, shards)
    vocab = params.get("vocab_size") or -1
    if vocab <= 0:  # Meta writes -1 and leaves the size to the tokenizer; the embedding knows it
        if "tok_embeddings.weight" not in layout:
            raise CheckpointError(f"{path}: missing key tok_embeddings.weight")
        vocab = layout["tok_embeddings.weight"][1][0]
    cfg = meta_config(params, vocab, path / "params.json")
    tensors = ((k, _merge_meta(k, dim, shape, files, shards, dtype, device)) for k, (dim, shape) in layout.items())
    return _fill(cfg, {k: shape for k, (_, shape) in layout.items()}, tensors, str(path), dtype)


# ---- Hugging Face -------------------------------------------------------------------------------

def hf_rope(data: dict, source: Path) -> dict:
    """rope_theta and rope_scaling from a Hugging Face config: top-level keys (older exports) or
    ``rope_parameters`` (newer ones); Llama-3 scaling is implemented, any other RoPE type refused."""
    params = {**(data.get("rope_scaling") or {}), **(data.get("rope_parameters") or {})}
    thetas = {t for t in (data.get("rope_theta"), params.pop("rope_theta", None)) if t is not None}
    if len(thetas) > 1:
        raise CheckpointError(f"{source}: rope_theta differs between the top level and rope_parameters: {sorted(thetas)}")
    kind = params.pop("rope_type", params.pop("type", "default"))
    theta = float(thetas.pop()) if thetas else 10000.0
    if kind == "default" and not params:
        return {"rope_theta": theta, "rope_scaling": None}
    scaling = {"rope_type": kind, **params}
    try:
        check_llama3_rope(scaling)
    except ValueError as e:
        raise CheckpointError(f"{source}: unsupported RoPE ({e}); plain RoPE and Llama-3 scaling are implemented") from e
    return {"rope_theta": theta, "rope_scaling": scaling}


def hf_config(data: dict, source: Path) -> LlamaConfig:
    """LlamaConfig from a Hugging Face config.json (HF's defaults for absent optional keys)."""
    unsupported = {"model_type": data.get("model_type", "llama") != "llama",
                   "hidden_act": data.get("hidden_act", "silu") != "silu",
                   "attention_bias": bool(data.get("attention_bias")),
                   "mlp_bias": bool(data.get("mlp_bias"))}
    bad = [f"{k}={data[k]!r}" for k, is_bad in unsupported.items() if is_bad]
    missing = [k for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
                           "vocab_size") if k not in data]
    if bad or missing:
        raise CheckpointError(f"{source}: missing keys {missing}, unsupported settings {bad}")
    if data.get("head_dim") not in (None, data["hidden_size"] // data["num_attention_heads"]):
        raise CheckpointError(f"{source}: head_dim={data['head_dim']} is not hidden_size/num_attention_heads")
    try:
        return LlamaConfig(dim=data["hidden_size"], n_layers=data["num_hidden_layers"],
                           n_heads=data["num_attention_heads"], n_kv_heads=data.get("num_key_value_heads"),
                           vocab_size=data["vocab_size"], hidden_dim=data["intermediate_size"],
                           norm_eps=data.get("rms_norm_eps", 1e-6), **hf_rope(data, source),
                           max_seq_len=data.get("max_position_embeddings", 2048))
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from e


def hf_to_meta_name(name: str) -> str:
    for pattern, meta in HF_NAMES:
        match = pattern.fullmatch(name)
        if match:
            return match.expand(meta)
    return name  # unknown: kept, so the strict check reports it under its own name


def unpermute_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo HF's q/k row order. HF's converter regroups each head's rows from Meta's interleaved
    pairs (2i, 2i+1) into two halves (i, i + D/2) for its rotate-half RoPE; this is the inverse."""
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def load_hf(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Llama:
    """Hugging Face LLaMA folder: config.json + one weight file or index-linked shards (eas.io.hf_files)."""
    path = Path(path)
    files = WeightFiles(path)
    return llama_from_hf(files, {n: n for n in files.shapes}, _read_object(path / CONFIG_FILE), str(path),
                         dtype, device)


def llama_from_hf(files: WeightFiles, names: dict[str, str], data: dict, source: str,
                  dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Llama:
    """A LLaMA from Hugging Face tensors; names maps each HF LLaMA name (``model.layers.0...``) to
    the checkpoint's own (LLaVA checkpoints nest them), data is the HF LLaMA config."""
    cfg = hf_config(data, Path(source) / CONFIG_FILE)
    kept = {hf: ckpt for hf, ckpt in names.items() if not HF_IGNORED.fullmatch(hf)}
    shapes = {hf_to_meta_name(hf): files.shapes[ckpt] for hf, ckpt in kept.items()}
    tied = "output.weight" not in shapes and data.get("tie_word_embeddings", False)
    if tied and "tok_embeddings.weight" in shapes:
        shapes["output.weight"] = shapes["tok_embeddings.weight"]
    rotary_heads = {".attention.wq.weight": cfg.n_heads, ".attention.wk.weight": cfg.n_kv_heads}

    def tensors():
        for hf, ckpt in kept.items():
            key, w = hf_to_meta_name(hf), files.get(ckpt)
            heads = next((h for suffix, h in rotary_heads.items() if key.endswith(suffix)), None)
            if heads is not None:
                w = unpermute_rotary(w, heads)
            w = w.to(device=device, dtype=dtype)
            if tied and key == "tok_embeddings.weight":
                yield "output.weight", w.clone()  # own storage: the model keeps them untied
            yield key, w

    return _fill(cfg, shapes, tensors(), source, dtype)
