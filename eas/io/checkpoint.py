"""Strict state-dict loading and the project's own checkpoint format.

Own format, for a LLaMA, a LaVIN or a converted CLIP vision tower alike: a directory with
``config.json`` (eas.model.config.save_config, its "type" names the model), ``model.safetensors``
(the full state dict) and, when known, ``tokenizer.model``. Every key is accounted for on load;
errors name the file and the offending keys.
"""
from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from eas.errors import CheckpointError
from eas.io.files import replacing
from eas.model.config import LavinConfig, LlamaConfig, LlavaConfig, VisionConfig, load_config, save_config
from eas.model.lavin import Lavin
from eas.model.llama import Llama
from eas.model.llava import Llava
from eas.model.vit import VisionTransformer

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
    """Write ``model`` (a Llama, Lavin, Llava or VisionTransformer) in the own format.

    Each file replaces its old version only once complete, the config last: an interrupted save
    never leaves a truncated file, and a failure is a CheckpointError naming the path.
    """
    out_dir = Path(out_dir)
    if tokenizer is not None and not Path(tokenizer).is_file():
        raise CheckpointError(f"tokenizer {tokenizer} does not exist")
    # safetensors stores raw CPU buffers: views and device tensors are materialised one by one.
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with replacing(out_dir / WEIGHTS_FILE) as tmp:
        try:
            save_file(tensors, tmp, metadata={"format": "pt"})
        except SafetensorError as e:  # its I/O errors are not OSErrors
            raise CheckpointError(f"cannot write {out_dir / WEIGHTS_FILE}: {e}") from e
    if tokenizer is not None:
        with replacing(out_dir / TOKENIZER_FILE) as tmp:
            shutil.copyfile(tokenizer, tmp)
    with replacing(out_dir / CONFIG_FILE) as tmp:
        save_config(model.cfg, tmp)
    return out_dir


MODEL_CLASSES = {LlamaConfig: Llama, LavinConfig: Lavin, LlavaConfig: Llava, VisionConfig: VisionTransformer}


_SAFETENSORS_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}


def stored_dtype(path: str | Path) -> torch.dtype:
    """The floating dtype a checkpoint folder (own format, Hugging Face or Meta) stores its weights
    in, read from the first floating tensor without loading the others."""
    path = Path(path)
    for f in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(f, framework="pt") as st:
                kinds = [st.get_slice(k).get_dtype() for k in st.keys()]
        except (OSError, SafetensorError) as e:
            raise CheckpointError(f"cannot read {f}: {e}") from e
        for kind in kinds:
            if kind in _SAFETENSORS_DTYPES:
                return _SAFETENSORS_DTYPES[kind]
    for f in sorted(path.glob("*.pth")) + sorted(path.glob("*.bin")):
        try:
            state = torch.load(f, map_location="cpu", mmap=True, weights_only=True)
        except Exception as e:  # unpickling garbage raises anything from UnpicklingError to EOFError
            raise CheckpointError(f"cannot read {f}: {str(e).strip().splitlines()[0]}") from e
        for t in (state.values() if isinstance(state, dict) else ()):
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                return t.dtype
    raise CheckpointError(f"{path}: no floating-point weights found (*.safetensors, *.pth or *.bin)")


def load_model(path: str | Path, dtype: torch.dtype | None = None,
               device: str | torch.device = "cpu") -> nn.Module:
    """Load an own-format checkpoint; ``dtype=None`` keeps the dtypes it was saved in."""
    path = Path(path)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: no {name} (an eas checkpoint holds {CONFIG_FILE} + {WEIGHTS_FILE})")
    cfg = load_config(path / CONFIG_FILE)
    with torch.device("meta"):
        model = MODEL_CLASSES[type(cfg)](cfg)
    source = str(path / WEIGHTS_FILE)
    try:
        with safe_open(path / WEIGHTS_FILE, framework="pt") as f:
            check_state(model, {k: f.get_slice(k).get_shape() for k in f.keys()}, source)
            state = {}
            for k in f.keys():
                t = f.get_tensor(k)
                state[k] = t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else t.dtype)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{source}: not a readable safetensors file: {e}") from e
    load_state_strict(model, state, source, dtype, keep_dtype=dtype is None)
    if isinstance(model, (Lavin, Llava)):
        model.llama.init_buffers()
    elif isinstance(model, Llama):
        model.init_buffers()
    return model
