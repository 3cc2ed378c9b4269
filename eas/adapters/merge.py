"""Exact re-parameterization of an EAS super-network into a plain, smaller model (eas_method.md §2).

The merge walks the layers: each adapted block folds its adapters into the weights that read them
(EASBlock.merged_state, AdaptedViTBlock.merged_state, built on PIA.fold_static / fold_routed) and
the result loads, strictly, into the merged layers of eas/adapters/merged.py. Tensors are computed
in fp32 and stored in the model's dtype.
"""
from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from eas.adapters.attach import eas_blocks, llama_of
from eas.adapters.merged import MODES, RoutedViTBlock, merged_block
from eas.adapters.pia import PIA, FoldBound
from eas.io.checkpoint import MODEL_CLASSES, load_state_strict
from eas.model.config import LlamaConfig
from eas.model.llama import Llama


def merged_config(cfg: LlamaConfig, no_attention, no_ffn=()) -> LlamaConfig:
    return dataclasses.replace(cfg, no_attention=tuple(no_attention), no_ffn=tuple(no_ffn))


def build_merged(cfg, info: dict):
    """An empty (meta-device) merged model of the right shape (a Llama, Lavin or Llava), merged layers in."""
    with torch.device("meta"):
        model = MODEL_CLASSES[type(cfg)](cfg)
        llama = llama_of(model)
        for i in range(llama.cfg.n_layers):
            llama.layers[i] = merged_block(llama.cfg, i, info)
        visual = getattr(model, "visual", None)
        if visual is not None and info["mode"] == "dynamic":
            blocks = visual.transformer.resblocks
            for i, blk in enumerate(blocks):
                blocks[i] = RoutedViTBlock(blk, visual.cfg.width, info["adapter_dim"], info["temperature"])
    model.merge_info = info
    return model


def _merge_info(model: nn.Module, mode: str) -> dict:
    eas = model.eas
    constants = None
    if mode == "static":
        constants = [pia.fixed_route.tolist() for pia in model.modules()
                     if isinstance(pia, PIA) and pia.fixed_route is not None]
    return {"mode": mode, "unit": eas.unit, "adapter_dim": eas.adapter_dim, "skip_dim": eas.skip_dim,
            "temperature": eas.temperature, "groups": eas.groups, "scale": eas.scale,
            "router_constants": constants}


def _merged_state(model: nn.Module, mode: str, stored: torch.dtype | None) -> tuple[dict[str, torch.Tensor], float]:
    """(the merged state, the largest gain of its static folds)"""
    llama = llama_of(model)
    prefix = "llama." if llama is not model else ""
    dtype = llama.tok_embeddings.weight.dtype
    state = {k: v for k, v in model.state_dict().items()
             if not k.startswith((prefix + "layers.", "visual.transformer.resblocks."))}
    bound = FoldBound(_coarser(dtype, stored))
    for block in eas_blocks(model):
        folded = block.merged_state(mode, bound)
        state.update({f"{prefix}layers.{block.layer}.{k}": v.to(dtype) for k, v in folded.items()})
    visual = getattr(model, "visual", None)
    if visual is not None:
        vdtype = visual.conv1.weight.dtype
        vit_bound = FoldBound(_coarser(vdtype, stored))
        for i, blk in enumerate(visual.transformer.resblocks):
            state.update({f"visual.transformer.resblocks.{i}.{k}": v.to(vdtype)
                          for k, v in blk.merged_state(mode, vit_bound).items()})
        return state, max(bound.gain, vit_bound.gain)
    return state, bound.gain


def _coarser(dtype: torch.dtype, stored: torch.dtype | None) -> torch.dtype:
    """The less precise of the dtype a merged model computes in and the one it is stored in."""
    return dtype if stored is None or torch.finfo(dtype).eps >= torch.finfo(stored).eps else stored


@torch.no_grad()
def merge(model: nn.Module, mode: str, stored: torch.dtype | None = None) -> nn.Module:
    """A new plain model (skipped units absent, no adapters) computing the same function.

    stored: the dtype the merged weights will be kept in (merged.pt's); it and the model's own, the
    less precise of the two, bound how much a static fold may amplify (PIA.fold_static). The
    result is in the model's dtype; a static merge records its folds' largest gain in merge_info
    ("fold_gain"), which bounds the dtypes it may be stored or loaded in later (check_fold_dtype).

    Takes a Llama, Lavin or Llava carrying adapters (eas.adapters.attach.add_adapters). A model without
    adapters is returned as an identical copy, so merging is idempotent.
    """
    if mode not in MODES:
        raise ValueError(f"merge mode must be one of {MODES}, got {mode!r}")
    if getattr(model, "eas", None) is None:
        return copy.deepcopy(model)
    if mode == "dynamic" and any(isinstance(m, PIA) and m.fixed_route is not None for m in model.modules()):
        raise ValueError("dynamic merge routes per example, but this model has router constants: "
                         "call eas.adapters.calibrate.clear_routes(model) first")
    llama = llama_of(model)
    eas = model.eas
    skipped = eas.skip_layers
    llama_cfg = merged_config(llama.cfg, skipped if eas.unit != "ffn" else (),
                              skipped if eas.unit != "attention" else ())
    cfg = dataclasses.replace(model.cfg, llama=llama_cfg) if llama is not model else llama_cfg
    state, gain = _merged_state(model, mode, stored)
    out = build_merged(cfg, {**_merge_info(model, mode), "fold_gain": gain if mode == "static" else None})
    load_state_strict(out, state, "merge", keep_dtype=True)
    llama_of(out).init_buffers(llama.tok_embeddings.weight.device)
    return out.eval()


@torch.no_grad()
def delete_attention(model: Llama, layers) -> Llama:
    """The floor a merge is measured against: the base model with these attentions simply removed."""
    cfg = dataclasses.replace(model.cfg, no_attention=tuple(layers))
    state = {k: v for k, v in model.state_dict().items()
             if not any(k.startswith(f"layers.{i}.attention") for i in cfg.no_attention)}
    with torch.device("meta"):
        out = Llama(cfg)
    load_state_strict(out, state, "delete_attention", dtype=model.tok_embeddings.weight.dtype)
    out.init_buffers(model.tok_embeddings.weight.device)
    return out.eval()
