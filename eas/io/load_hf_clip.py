"""Load a Hugging Face CLIP vision tower (``vision_model.*``) into the project's ViT.

Hugging Face keeps q, k and v as three projections where OpenAI (and our ViT) packs them into one
``in_proj``; everything else is a renaming. The same mapping serves a CLIP folder (CLIPModel or
CLIPVisionModel, the tower LLaVA's original release names) and the tower inside a ``llava-hf``
checkpoint (``vision_tower.vision_model.*``). Shapes are checked against the model before any
tensor is read; a missing, unexpected or wrong-shaped key is a CheckpointError naming it.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from eas.errors import CheckpointError
from eas.io.checkpoint import check_state, load_state_strict
from eas.io.files import read_json
from eas.io.hf_files import WeightFiles
from eas.io.load_clip import infer_config
from eas.model.config import VisionConfig
from eas.model.vit import VisionTransformer

TOWER = "vision_model."
PROJECTION = "visual_projection.weight"  # CLIPModel's image projection, [output_dim, width]
# CLIPModel's text half and bookkeeping: dropped by name, anything else unknown is an error.
DROPPED = re.compile(r"text_model\..*|text_projection\.weight|logit_scale")
POSITION_IDS = "embeddings.position_ids"  # a saved arange buffer of older exports: nothing to load
RENAMES = [(re.compile(p), r) for p, r in [
    (r"embeddings\.class_embedding", "class_embedding"),
    (r"embeddings\.patch_embedding\.weight", "conv1.weight"),
    (r"embeddings\.position_embedding\.weight", "positional_embedding"),
    (r"pre_layrnorm\.(weight|bias)", r"ln_pre.\1"),
    (r"post_layernorm\.(weight|bias)", r"ln_post.\1"),
    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"transformer.resblocks.\1.attn.out_proj.\2"),
    (r"encoder\.layers\.(\d+)\.layer_norm([12])\.(weight|bias)", r"transformer.resblocks.\1.ln_\2.\3"),
    (r"encoder\.layers\.(\d+)\.mlp\.fc1\.(weight|bias)", r"transformer.resblocks.\1.mlp.c_fc.\2"),
    (r"encoder\.layers\.(\d+)\.mlp\.fc2\.(weight|bias)", r"transformer.resblocks.\1.mlp.c_proj.\2"),
]]
QKV = re.compile(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)")


def _our_name(name: str) -> tuple[str | None, str | None]:
    """(our parameter name or None when unknown, the q/k/v letter when it is a third of in_proj)."""
    m = QKV.fullmatch(name)
    if m:
        return f"transformer.resblocks.{m[1]}.attn.in_proj_{m[3]}", m[2]
    for pattern, ours in RENAMES:
        if pattern.fullmatch(name):
            return pattern.sub(ours, name), None
    return None, None


def tower_plan(shapes: dict[str, tuple[int, ...]], prefix: str, source: str) -> dict[str, tuple[list[str], bool]]:
    """Our name -> (the checkpoint names it is made of, in order; whether to transpose), for the
    tower under ``prefix`` + ``vision_model.`` and an optional ``prefix`` + visual_projection.
    Unknown names are kept as they are, for check_state to report."""
    plan: dict[str, tuple[list[str], bool]] = {}
    packed: dict[str, dict[str, str]] = {}
    for full in shapes:
        if full == prefix + PROJECTION:
            plan["proj"] = ([full], True)
            continue
        if full == prefix + TOWER + POSITION_IDS:
            continue
        ours, part = _our_name(full[len(prefix + TOWER):]) if full.startswith(prefix + TOWER) else (None, None)
        if part is not None:
            packed.setdefault(ours, {})[part] = full
        else:
            plan[ours or full] = ([full], False)
    for ours, parts in packed.items():
        letter, present = next(iter(parts.items()))
        absent = [present.replace(f".{letter}_proj.", f".{m}_proj.") for m in "qkv" if m not in parts]
        if absent:
            raise CheckpointError(f"{source}: missing key {absent[0]} (q, k and v projections come together)")
        if len({shapes[parts[m]] for m in "qkv"}) > 1:
            raise CheckpointError(f"{source}: shape mismatch between " + ", ".join(
                f"{parts[m]} {tuple(shapes[parts[m]])}" for m in "qkv"))
        plan[ours] = ([parts[m] for m in "qkv"], False)
    return plan


def plan_shapes(plan: dict[str, tuple[list[str], bool]], shapes) -> dict[str, tuple[int, ...]]:
    """Our shapes: q/k/v stacked along rows, the projection transposed."""
    out = {}
    for ours, (names, transpose) in plan.items():
        first = tuple(shapes[names[0]])
        out[ours] = first[::-1] if transpose else (len(names) * first[0], *first[1:])
    return out


# Hugging Face's CLIPVisionConfig defaults, which a config.json may leave out.
HF_DEFAULTS = {"num_attention_heads": 12, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
HF_SHAPE_FIELDS = {"hidden_size": "width", "num_hidden_layers": "layers", "image_size": "image_size",
                   "patch_size": "patch_size"}


def tower_config(shapes: dict[str, tuple[int, ...]], hf: dict | None, source: str) -> VisionConfig:
    """VisionConfig from our shapes; with a Hugging Face vision config, its head count, checked
    against the shapes. Only OpenAI CLIP's QuickGELU and LayerNorm eps 1e-5 are implemented."""
    heads = None
    if hf is not None:
        hf = {**HF_DEFAULTS, **hf}
        if hf["hidden_act"] != "quick_gelu" or not math.isclose(hf["layer_norm_eps"], 1e-5):
            raise CheckpointError(f"{source}: hidden_act={hf['hidden_act']!r}, layer_norm_eps={hf['layer_norm_eps']}; "
                                  f"only OpenAI CLIP's quick_gelu and 1e-5 are implemented")
        heads = hf["num_attention_heads"]
    cfg = infer_config(shapes, source, heads)
    for key, field in HF_SHAPE_FIELDS.items():
        if hf is not None and key in hf and hf[key] != getattr(cfg, field):
            raise CheckpointError(f"{source}: config {key}={hf[key]} but the weights have {field} {getattr(cfg, field)}")
    return cfg


def load_tower(files: WeightFiles, names, prefix: str, hf: dict | None, source: str,
               dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> VisionTransformer:
    """The tower made of ``names`` (all under ``prefix``) of ``files``, strictly."""
    shapes = {n: files.shapes[n] for n in names}
    plan = tower_plan(shapes, prefix, source)
    ours = plan_shapes(plan, shapes)
    cfg = tower_config(ours, hf, source)
    with torch.device("meta"):
        model = VisionTransformer(cfg)
    check_state(model, ours, source)

    def read(parts: list[str], transpose: bool) -> torch.Tensor:
        t = torch.cat([files.get(n).to(device, dtype) for n in parts])
        return t.T.contiguous() if transpose else t

    return load_state_strict(model, {k: read(*v) for k, v in plan.items()}, source, dtype)


def read_tower_config(folder: Path) -> dict | None:
    """A CLIP folder's vision settings: CLIPModel nests them under vision_config; None without config.json."""
    if not (folder / "config.json").is_file():
        return None
    data = read_json(folder / "config.json", "CLIP config", CheckpointError)
    if not isinstance(data, dict):
        raise CheckpointError(f"{folder / 'config.json'}: expected a JSON object")
    return data.get("vision_config", data) if data.get("model_type") == "clip" else data


def load_hf_clip(folder: str | Path, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> VisionTransformer:
    """A Hugging Face CLIP folder (CLIPModel or CLIPVisionModel; safetensors or .bin, sharded or not)."""
    folder = Path(folder)
    files = WeightFiles(folder)
    names = [n for n in files.shapes if not DROPPED.fullmatch(n)]
    return load_tower(files, names, "", read_tower_config(folder), str(folder), dtype, device)
