"""Load CLIP's visual tower: OpenAI's releases (TorchScript ``ViT-L-14.pt`` or a plain state dict,
``.pt``/``.safetensors``) and the own checkpoint format (eas.io.checkpoint) they convert to.

The config is inferred from tensor shapes, as OpenAI's ``build_model`` does. The text tower is
dropped by name; any other key, a missing key or a wrong shape is a CheckpointError naming it.
The model is built on the meta device and the checkpoint's tensors are assigned into it, so
loading costs about one copy of the weights.
"""
from __future__ import annotations

import math
import re
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from eas.errors import CheckpointError
from eas.io.checkpoint import load_model, load_state_strict
from eas.io.files import read_json
from eas.model.config import VisionConfig
from eas.model.vit import VisionTransformer

VISUAL_PREFIX = "visual."
# Everything in an OpenAI CLIP checkpoint that is not the visual tower.
TEXT_TOWER_KEYS = {"positional_embedding", "text_projection", "logit_scale", "input_resolution",
                   "context_length", "vocab_size"}
TEXT_TOWER_PREFIXES = ("transformer.", "token_embedding.", "ln_final.")
HEAD_WIDTH = 64  # every OpenAI ViT uses 64-wide heads; the checkpoint does not record the count
RESBLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.")


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with a constants.pkl record next to the weights."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(name.endswith("/constants.pkl") for name in z.namelist())


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint file -> flat state dict (TorchScript archives are read through torch.jit)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"CLIP checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file: {e}") from e
    if _is_torchscript(path):  # OpenAI's releases; torch.load refuses these with weights_only
        try:
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        except RuntimeError as e:
            raise CheckpointError(f"{path}: unreadable TorchScript archive: {e}") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # pickle and zip errors have no common base class
        raise CheckpointError(f"{path}: not a readable PyTorch state dict: {e}") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    return obj


def visual_state(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Keep ``visual.*`` (prefix stripped), drop the known text-tower keys, reject anything else."""
    visual = {}
    for key, tensor in state.items():
        if key.startswith(VISUAL_PREFIX):
            visual[key[len(VISUAL_PREFIX):]] = tensor
        elif key not in TEXT_TOWER_KEYS and not key.startswith(TEXT_TOWER_PREFIXES):
            raise CheckpointError(f"{source}: unexpected key {key!r} (neither visual.* nor CLIP's text tower)")
    if not visual:
        raise CheckpointError(f"{source}: no visual.* keys; is this a CLIP checkpoint?")
    return visual


# The tensors the ViT's shape is read from, with their number of dimensions.
SHAPE_KEYS = {"conv1.weight": 4, "positional_embedding": 2, "transformer.resblocks.0.mlp.c_fc.weight": 2}


def infer_config(shapes: dict[str, tuple[int, ...]], source: str, heads: int | None = None) -> VisionConfig:
    """VisionConfig from the visual tower's tensor shapes (keys without the ``visual.`` prefix);
    heads: the head count when known (OpenAI's checkpoints leave it to the 64-wide rule).
    No ``proj`` (a vision-only export) gives output_dim 0."""
    for key, ndim in SHAPE_KEYS.items():
        if key not in shapes:
            raise CheckpointError(f"{source}: missing key {VISUAL_PREFIX}{key} (needed to infer the ViT shape)")
        if len(shapes[key]) != ndim or 0 in shapes[key]:
            raise CheckpointError(f"{source}: {VISUAL_PREFIX}{key} has shape {tuple(shapes[key])}, expected "
                                  f"{ndim} non-empty dimensions")
    width, _, patch, _ = shapes["conv1.weight"]
    n_positions = shapes["positional_embedding"][0]
    grid = math.isqrt(n_positions - 1)
    if grid == 0 or grid * grid + 1 != n_positions:
        raise CheckpointError(f"{source}: {VISUAL_PREFIX}positional_embedding has {n_positions} rows, not "
                              f"grid² + 1 for a square patch grid")
    if heads is None and width % HEAD_WIDTH:
        raise CheckpointError(f"{source}: width {width} is not a multiple of CLIP's {HEAD_WIDTH}-wide heads")
    layers = 1 + max(int(m.group(1)) for k in shapes if (m := RESBLOCK.match(k)))
    try:
        return VisionConfig(image_size=grid * patch, patch_size=patch, width=width, layers=layers,
                            heads=heads or width // HEAD_WIDTH, output_dim=shapes["proj"][1] if "proj" in shapes else 0,
                            mlp_ratio=shapes["transformer.resblocks.0.mlp.c_fc.weight"][0] / width)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from e


def load_openai_clip(path: str | Path, dtype: torch.dtype = torch.float32,
                     device: str | torch.device = "cpu") -> VisionTransformer:
    state = visual_state(read_state(path), str(path))
    source = f"{path} (visual.* keys, prefix stripped)"
    cfg = infer_config({k: tuple(t.shape) for k, t in state.items()}, source)
    with torch.device("meta"):
        model = VisionTransformer(cfg)
    return load_state_strict(model, {k: t.to(device) for k, t in state.items()}, source, dtype)


def _is_own_format(folder: Path) -> bool:
    """Own-format folders mark their config.json with the model's "type"."""
    config = folder / "config.json"
    return config.is_file() and "type" in (read_json(config, "model config", CheckpointError) or {})


def load_vision(path: str | Path, dtype: torch.dtype = torch.float32,
                device: str | torch.device = "cpu") -> VisionTransformer:
    """An OpenAI CLIP file, a Hugging Face CLIP folder, or a converted folder (own format,
    weights/convert_clip.py), whichever ``path`` is."""
    if not Path(path).is_dir():
        return load_openai_clip(path, dtype, device)
    if not _is_own_format(Path(path)):
        from eas.io.load_hf_clip import load_hf_clip  # it builds on this module
        return load_hf_clip(path, dtype, device)
    model = load_model(path, dtype, device)
    if not isinstance(model, VisionTransformer):
        raise CheckpointError(f"{path}: holds a {type(model).__name__}, not a CLIP vision tower")
    return model
