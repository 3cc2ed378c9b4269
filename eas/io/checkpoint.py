"""Strict state-dict loading and the project's own checkpoint format.

Own format: a directory with ``config.json`` (eas.config.save_config), ``model.safetensors`` (the
full state dict) and, when known, ``tokenizer.model``. Every key is accounted for on load; errors
name the file and the offending keys.
"""
from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from eas.errors import CheckpointError
from eas.model.config import LavinConfig, LlamaConfig, load_config, save_config

CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE = "config.json", "model.safetensors", "tokenizer.model"


def _listing(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_state(module: nn.Module, shapes: Mapping[str, Sequence[int]], source: str) -> None:
    """Raise CheckpointError unless ``shapes`` has exactly the module's keys with its shapes.

    Loaders call this with shapes read from file headers, before converting any tensor, so a bad
    checkpoint fails in seconds rather than after minutes of conversion.
    """
    expected = module.state_dict(keep_vars=True)
    missing = expected.keys() - shapes.keys()
    unexpected = shapes.keys() - expected.keys()
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    wrong = [f"{k}: checkpoint {tuple(shapes[k])} vs model {tuple(expected[k].shape)}"
             for k in sorted(expected.keys() & shapes.keys()) if tuple(shapes[k]) != tuple(expected[k].shape)]
    if wrong:
        problems.append("shape mismatch: " + "; ".join(wrong[:8]))
    if problems:
        raise CheckpointError(f"{source}: " + " | ".join(problems))


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str,
                      dtype: torch.dtype | None = None, *, keep_dtype: bool = False) -> nn.Module:
    """Load ``state`` into ``module`` (possibly built on the meta device) by assignment.

    Missing keys, unexpected keys and shape mismatches raise CheckpointError naming them and
    ``source``. Floating tensors are cast to ``dtype`` (or the module's dtype) one at a time, so
    peak memory stays near one model; ``keep_dtype`` keeps the checkpoint's own dtypes instead.
    Tensors are detached first: a Parameter of another model is never adopted (or re-flagged as
    trainable), only its storage may be shared.
    """
    check_state(module, {k: t.shape for k, t in state.items()}, source)
    expected = module.state_dict(keep_vars=True)
    cast = {}
    for k, t in state.items():
        if not keep_dtype and t.is_floating_point() and expected[k].is_floating_point():
            t = t.to(dtype or expected[k].dtype)
        cast[k] = t.detach()
    module.load_state_dict(cast, strict=True, assign=True)
    return module


def save_model(model: nn.Module, out_dir: str | Path, tokenizer: str | Path | None = None) -> Path:
    """Write ``model`` (anything with a ``cfg`` known to eas.config) in the own format."""
    out_dir = Path(out_dir)
    if tokenizer is not None and not Path(tokenizer).is_file():
        raise CheckpointError(f"tokenizer {tokenizer} does not exist")
    out_dir.mkdir(parents=True, exist_ok=True)
    # safetensors stores raw CPU buffers: views and device tensors are materialised one by one.
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, out_dir / WEIGHTS_FILE, metadata={"format": "pt"})
    save_config(model.cfg, out_dir / CONFIG_FILE)
    if tokenizer is not None:
        shutil.copyfile(tokenizer, out_dir / TOKENIZER_FILE)
    return out_dir


def _model_class(cfg, source: Path) -> type[nn.Module]:
    if isinstance(cfg, LlamaConfig):
        from eas.model.llama import Llama
        return Llama
    if isinstance(cfg, LavinConfig):
        # Imported on use: a plain LLaMA load should not need the vision tower and adapters.
        from eas.model.lavin import Lavin
        return Lavin
    raise CheckpointError(f"{source}: no model class for a {type(cfg).__name__} checkpoint")


def load_model(path: str | Path, dtype: torch.dtype | None = None,
               device: str | torch.device = "cpu") -> nn.Module:
    """Load an own-format checkpoint; ``dtype=None`` keeps the dtypes it was saved in."""
    path = Path(path)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: no {name} (an eas checkpoint holds {CONFIG_FILE} + {WEIGHTS_FILE})")
    cfg = load_config(path / CONFIG_FILE)
    with torch.device("meta"):
        model = _model_class(cfg, path / CONFIG_FILE)(cfg)
    source = str(path / WEIGHTS_FILE)
    with safe_open(path / WEIGHTS_FILE, framework="pt") as f:
        check_state(model, {k: f.get_slice(k).get_shape() for k in f.keys()}, source)
        state = {}
        for k in f.keys():
            t = f.get_tensor(k)
            state[k] = t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else t.dtype)
    load_state_strict(model, state, source, dtype, keep_dtype=dtype is None)
    (model.llama if isinstance(cfg, LavinConfig) else model).init_buffers()
    return model
