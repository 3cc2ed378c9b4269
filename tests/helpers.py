"""What several test files share: error measures and small random set-ups."""
from __future__ import annotations

import json
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


# ---- checkpoints written the way each release does ---------------------------------------------

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
