"""merged.pt: a self-describing merged checkpoint (config, skip list, mode, prompt format, no adapter keys)."""
from __future__ import annotations

import dataclasses
import os

import torch

from eas.adapters.attach import llama_of
from eas.adapters.merge import build_merged
from eas.adapters.pia import check_fold_dtype
from eas.data.prompt import PromptFormat
from eas.errors import CheckpointError
from eas.io.checkpoint import load_state_strict
from eas.io.files import atomic_write
from eas.model.config import LavinConfig, LlamaConfig, LlavaConfig

FORMAT = "eas-merged"
# 3: no_attention / no_ffn replace skip_layers / skip_ffn_layers in the config; merged layer names.
# 4: the task's prompt format (template, own question, decode budget), which generation applies.
# 5: a static merge shifts the norm outputs (attention_norm.shift, ffn_shift) instead of adding
#    q/k/v and W1/W3 biases; no merge adds biases the base model lacks.
VERSION = 5


def save_merged(model, path, prompt_format: PromptFormat, tokenizer: str | None = None,
                dtype: torch.dtype | None = None) -> None:
    """Write the output of eas.adapters.merge.merge() with everything needed to rebuild it and to
    ask it what it was tuned to answer.

    prompt_format: the format of the task the model was tuned on (eas.data.tasks.TaskData).
    tokenizer: path of the tokenizer.model, absolute or relative to the folder of `path`.
    dtype: store floating tensors in this dtype (default: as they are)."""
    info = getattr(model, "merge_info", None)
    if info is None:
        raise ValueError("save_merged wants the output of eas.adapters.merge.merge()")
    if dtype is not None:
        check_fold_dtype(info.get("fold_gain"), dtype, f"saving {path}")
    cfg = llama_of(model).cfg
    state = {k: v.to(dtype) if dtype is not None and v.is_floating_point() else v
             for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "version": VERSION, "kind": type(model.cfg).__name__,
               "config": dataclasses.asdict(model.cfg), "no_attention": list(cfg.no_attention),
               "no_ffn": list(cfg.no_ffn), "merge": info, "tokenizer": tokenizer, "prompt_format": prompt_format.to_json(), "state_dict": state}
    atomic_write(path, lambda f: torch.save(payload, f))


@torch.no_grad()
def as_stored(model, dtype: torch.dtype):
    """`model` (in place) with every stored floating tensor rounded to `dtype` and kept in its own
    dtype: what load_merged(save_merged(model, dtype=dtype)) gives, cast back for computing."""
    for t in model.state_dict().values():
        if t.is_floating_point():
            t.copy_(t.to(dtype))
    return model


def load_merged(path, device="cpu", dtype: torch.dtype | None = None):
    """merged.pt -> a plain Llama or Lavin with the skipped units absent (in `dtype`, default as stored)."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except OSError as e:
        raise CheckpointError(f"cannot read merged checkpoint {path}: {e.strerror or e}") from e
    except Exception as e:  # unpickling garbage raises anything from UnpicklingError to IndexError
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a PyTorch checkpoint file ({detail})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an EAS merged checkpoint (no format={FORMAT!r})")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path} is merged.pt version {ckpt.get('version')}; this code reads version {VERSION}: "
                              f"re-merge it by running its `python run.py tune ...` command again with --resume (a "
                              f"finished run re-evaluates from its state.pt and writes a new merged.pt)")
    kinds = {"LlamaConfig": LlamaConfig, "LavinConfig": LavinConfig, "LlavaConfig": LlavaConfig}
    if ckpt.get("kind") not in kinds:
        raise CheckpointError(f"{path}: unknown model kind {ckpt.get('kind')!r}; expected one of {sorted(kinds)}")
    if dtype is not None and isinstance(ckpt.get("merge"), dict):
        check_fold_dtype(ckpt["merge"].get("fold_gain"), dtype, f"loading {path}")
    try:
        model = build_merged(kinds[ckpt["kind"]](**ckpt["config"]), ckpt["merge"])
        prompt_format = PromptFormat.from_json(ckpt.get("prompt_format"), str(path))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad config, merge record or prompt format: {e}") from e
    load_state_strict(model, ckpt["state_dict"], str(path), dtype, keep_dtype=dtype is None)
    llama_of(model).init_buffers(torch.device(device))
    ref = ckpt["tokenizer"]
    # A relative reference names a file next to merged.pt, so a run folder can be moved whole.
    model.tokenizer_ref = ref if ref is None or os.path.isabs(ref) else os.path.join(os.path.dirname(path), ref)
    model.prompt_format = prompt_format
    return model.eval()
