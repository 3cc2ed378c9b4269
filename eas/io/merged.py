"""merged.pt: a self-describing merged checkpoint (config, skip list, mode, no adapter keys)."""
from __future__ import annotations

import dataclasses
import os

import torch

from eas.io.checkpoint import CheckpointError, load_state_strict
from eas.model.config import LavinConfig, LlamaConfig
from eas.adapters.merge import build_merged

FORMAT = "eas-merged"
# 2: W1/W3 biases only in layers whose attention is skipped; skip_ffn_layers and residual adapters.
VERSION = 2


def save_merged(model, path, tokenizer: str | None = None) -> None:
    """Write the output of eas.merge.merge() with everything needed to rebuild it.

    tokenizer: path of the tokenizer.model, absolute or relative to the folder of `path`."""
    info = getattr(model, "merge_info", None)
    if info is None:
        raise ValueError("save_merged wants the output of eas.merge.merge()")
    llama = getattr(model, "llama", model)
    tmp = f"{path}.tmp"
    torch.save({"format": FORMAT, "version": VERSION, "kind": type(model.cfg).__name__,
                "config": dataclasses.asdict(model.cfg), "skip_layers": list(llama.cfg.skip_layers),
                "merge": info, "tokenizer": tokenizer, "state_dict": model.state_dict()}, tmp)
    os.replace(tmp, path)  # atomic: an interrupted save never leaves a truncated merged.pt


def load_merged(path, device="cpu"):
    """merged.pt -> a plain Llama or Lavin with the skipped attentions absent."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except (OSError, RuntimeError) as e:
        raise CheckpointError(f"cannot read merged checkpoint {path}: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an EAS merged checkpoint (no format={FORMAT!r})")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path} is merged.pt version {ckpt.get('version')}; this code reads version {VERSION}: "
                         f"re-merge it by running its `python run.py tune ...` command again with --resume (a finished run "
                         f"re-evaluates from its state.pt and writes a new merged.pt)")
    kinds = {"LlamaConfig": LlamaConfig, "LavinConfig": LavinConfig}
    if ckpt.get("kind") not in kinds:
        raise CheckpointError(f"{path}: unknown model kind {ckpt.get('kind')!r}; expected one of {sorted(kinds)}")
    model = build_merged(kinds[ckpt["kind"]](**ckpt["config"]), ckpt["merge"])
    load_state_strict(model, ckpt["state_dict"], str(path), keep_dtype=True)
    getattr(model, "llama", model).init_buffers(torch.device(device))
    ref = ckpt["tokenizer"]
    # A relative reference names a file next to merged.pt, so a run folder can be moved whole.
    model.tokenizer_ref = ref if ref is None or os.path.isabs(ref) else os.path.join(os.path.dirname(path), ref)
    return model.eval()
