"""Load LLaVA-1.5 checkpoints in both published layouts into eas.model.llava.Llava.

original (liuhaotian/llava-v1.5-*): a LLaMA config.json plus mm_vision_tower,
    mm_vision_select_layer, mm_projector_type; LLaMA tensors under ``model.*`` / ``lm_head``, the
    projector as ``model.mm_projector.{0,2}``; the tower is a separate CLIP checkpoint (``clip``).
llava-hf (llava-hf/llava-1.5-*-hf): text_config / vision_config, image_token_index, a vocabulary
    padded past the tokenizer's; ``language_model.model.*`` + ``language_model.lm_head`` (or, in
    newer exports, ``model.language_model.*`` + ``lm_head``), ``[model.]vision_tower.vision_model.*``,
    ``[model.]multi_modal_projector.linear_{1,2}``.
Every tensor is accounted for: one outside these groups, or missing, or of the wrong shape, is a
CheckpointError naming it and the folder. Tensors are read one at a time (eas.io.hf_files).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from eas.errors import CheckpointError
from eas.io.checkpoint import CONFIG_FILE, load_state_strict
from eas.io.files import read_json
from eas.io.hf_files import WeightFiles
from eas.io.load_clip import load_vision
from eas.io.load_hf_clip import load_tower
from eas.io.load_llama import find_tokenizer, llama_from_hf
from eas.model.config import LlavaConfig
from eas.model.llava import Llava, Projector

# transformers' LlamaConfig defaults: llava-hf's text_config records only what differs from them.
HF_LLAMA_DEFAULTS = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                     "num_attention_heads": 32, "vocab_size": 32000, "rms_norm_eps": 1e-6,
                     "max_position_embeddings": 2048}
ORIGINAL_PROJECTOR = {"model.mm_projector.0.": "linear_1.", "model.mm_projector.2.": "linear_2."}
HF_LLM = [(re.compile(r"language_model\.(model\..*|lm_head\.weight)"), r"\1"),
          (re.compile(r"model\.language_model\.(.*)"), r"model.\1"), (re.compile(r"(lm_head\.weight)"), r"\1")]
HF_TOWER = re.compile(r"((?:model\.)?vision_tower\.)vision_model\..*")
HF_PROJECTOR = re.compile(r"(?:model\.)?multi_modal_projector\.(linear_[12]\.(?:weight|bias))")


def llava_layout(path: Path) -> str | None:
    """'original', 'llava-hf' or None (not a LLaVA folder), from its config.json."""
    data = read_json(path / CONFIG_FILE, "model config") if (path / CONFIG_FILE).is_file() else {}
    if not isinstance(data, dict):
        return None
    if "mm_vision_tower" in data or "mm_projector_type" in data:
        return "original"
    return "llava-hf" if data.get("model_type") == "llava" else None


def _require(data: dict, key: str, allowed, default, source: Path):
    value = data.get(key, default)
    if value not in allowed:
        raise CheckpointError(f"{source}: {key}={value!r} is not supported (LLaVA-1.5 uses {allowed[0]!r})")
    return value


def _split_original(files: WeightFiles) -> tuple[dict[str, str], dict[str, str]]:
    """(HF LLaMA name -> checkpoint name, projector name -> checkpoint name)."""
    llm, projector = {}, {}
    for name in files.shapes:
        prefix = next((p for p in ORIGINAL_PROJECTOR if name.startswith(p)), None)
        if prefix is not None:
            projector[ORIGINAL_PROJECTOR[prefix] + name[len(prefix):]] = name
        else:
            llm[name] = name  # anything else is a LLaMA tensor, or reported as unexpected by its name
    return llm, projector


def _split_hf(files: WeightFiles, source: Path):
    """(LLaMA names, projector names, tower tensor names, the prefix before vision_model.)."""
    llm, projector, tower, prefixes = {}, {}, [], set()
    for name in files.shapes:
        if m := HF_PROJECTOR.fullmatch(name):
            projector[m[1]] = name
        elif m := HF_TOWER.fullmatch(name):
            tower.append(name)
            prefixes.add(m[1])
        elif hit := next((p.sub(r, name) for p, r in HF_LLM if p.fullmatch(name)), None):
            llm[hit] = name
        else:
            raise CheckpointError(f"{source}: unexpected key {name} (neither language_model, vision_tower nor "
                                  f"multi_modal_projector)")
    if len(prefixes) > 1:
        raise CheckpointError(f"{source}: vision tower tensors under several prefixes {sorted(prefixes)}")
    return llm, projector, tower, prefixes.pop() if prefixes else "vision_tower."


def _projector(files: WeightFiles, names: dict[str, str], source: str, dtype, device) -> Projector:
    if "linear_1.weight" not in names:
        raise CheckpointError(f"{source}: no projector weights (model.mm_projector.0 / multi_modal_projector.linear_1)")
    out_features, in_features = files.shapes[names["linear_1.weight"]]
    with torch.device("meta"):
        projector = Projector(in_features, out_features)
    return load_state_strict(projector, {k: files.get(n).to(device) for k, n in names.items()},
                             f"{source} (projector)", dtype)


def load_llava(path: str | Path, clip: str | Path | None = None, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> tuple[Llava, Path | None]:
    """-> (Llava, its tokenizer.model or None). clip: the tower of an original-layout release."""
    path = Path(path)
    layout = llava_layout(path)
    if layout is None:
        raise CheckpointError(f"{path}: not a LLaVA checkpoint (config.json has neither mm_vision_tower nor "
                              f"model_type 'llava')")
    data = read_json(path / CONFIG_FILE, "model config")
    source, files = path / CONFIG_FILE, WeightFiles(path)
    if layout == "original":
        _require(data, "mm_projector_type", ["mlp2x_gelu"], None, source)
        _require(data, "mm_vision_select_feature", ["patch"], "patch", source)
        if clip is None:
            raise CheckpointError(f"{path}: an original LLaVA release keeps its vision tower apart "
                                  f"({data.get('mm_vision_tower')}); pass its CLIP folder with --clip")
        llm, projector = _split_original(files)
        text, feature_layer = {**data, "model_type": "llama"}, data.get("mm_vision_select_layer", -2)
    else:
        _require(data, "vision_feature_select_strategy", ["default"], "default", source)
        _require(data, "projector_hidden_act", ["gelu"], "gelu", source)
        llm, projector, tower_names, prefix = _split_hf(files, path)
        text, feature_layer = {**HF_LLAMA_DEFAULTS, **data.get("text_config", {})}, data.get("vision_feature_layer", -2)
    llama = llama_from_hf(files, llm, text, str(path), dtype, device)
    tower = (load_vision(clip, dtype, device) if layout == "original" else
             load_tower(files, tower_names, prefix, data.get("vision_config", {}), str(path), dtype, device))
    try:
        cfg = LlavaConfig(llama=llama.cfg, vision=tower.cfg, feature_layer=feature_layer)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: {e}") from e
    with torch.device("meta"):
        model = Llava(cfg)
    model.llama, model.vision_tower = llama, tower
    model.adapter_projector = _projector(files, projector, str(path), dtype, device)
    if model.adapter_projector.linear_1.in_features != tower.cfg.width or \
            model.adapter_projector.linear_2.out_features != llama.cfg.dim:
        raise CheckpointError(f"{path}: projector {tuple(files.shapes[projector['linear_1.weight']])} does not "
                              f"join a ViT of width {tower.cfg.width} to a LLaMA of width {llama.cfg.dim}")
    return model, find_tokenizer(path, "hf")
