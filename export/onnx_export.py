"""ONNX export of the graphs in export/graphs.py, with named symbolic dims checked against the file.

Every graph's I/O is declared here first (TensorSpec: name, shape of ints and dim names, dtype);
the exported file is then read back and must declare exactly that, so the manifest written from
these specs describes the files and not our intentions.

Dim names: batch (examples), images (vision batch), seq (prompt slots) and slots (the K/V
buffers' length at decode, the runtime's choice: prompt + answer).

The exporter is torch.onnx's TorchScript-based one (dynamo=False): on the tiny model it is ~10x
faster than the dynamo exporter (0.9 s against 15 s for prefill+decode of a 4-layer test model)
and gives the same numbers in ONNX Runtime; every export is verified against PyTorch anyway.
"""
from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch
from torch import nn

from eas.adapters.attach import llama_of
from export.external_data import FILE as WEIGHTS_FILE, ExternalData
from export.symbolics import export_symbolics
from export.graphs import (DecodeGraph, EmbedGraph, PrefillGraph, StateLayout, VisionGraph, n_image_tokens,
                           state_layout, wiring)

OPSET = 18
DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.int64: "int64", torch.bool: "bool"}
ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
               onnx.TensorProto.INT64: "int64", onnx.TensorProto.BOOL: "bool"}
# Sizes of the example inputs traced at export: distinct and >= 2, so no dynamic dim is mistaken
# for a constant or for another dim.
EXAMPLE_DIMS = {"batch": 2, "images": 2, "seq": 5, "slots": 7}
DIM_NAMES = tuple(EXAMPLE_DIMS)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass
class GraphSpec:
    name: str
    module: nn.Module
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    data_file: str | None = None  # the folder's weights file, set by export_graph (None: all inline)
    weights: list[dict] = field(default_factory=list)  # where in data_file each of them is

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"


def graph_specs(model: nn.Module) -> tuple[list[GraphSpec], StateLayout]:
    """The graphs of a merged Llama, Lavin or Llava (vision only with an image tower), with their I/O."""
    llama = llama_of(model)
    cfg = llama.cfg
    fdt = DTYPES[llama.tok_embeddings.weight.dtype]
    layout = state_layout(llama)
    def kv(slots: str) -> tuple:  # the state's head-major K/V layout (eas/model/state.py)
        return ("batch", cfg.n_kv_heads, slots, cfg.head_dim)

    embed = EmbedGraph(model)
    masks = [TensorSpec("modality_slot", ("batch", "seq"), "bool"), TensorSpec("has_image", ("batch",), "bool")]
    specs = [GraphSpec("embed", embed, [TensorSpec("tokens", ("batch", "seq"), "int64")] + (masks if embed.lavin else []),
                       [TensorSpec("embeds", ("batch", "seq", cfg.dim), fdt)])]
    if wiring(model) != "text":
        size = model.cfg.vision.image_size
        specs.append(GraphSpec("vision", VisionGraph(model), [TensorSpec("pixels", ("images", 3, size, size), fdt)],
                               [TensorSpec("image_embeds", ("images", n_image_tokens(model), cfg.dim), fdt)]))
    adapters = [TensorSpec(n, ("batch", *shape), fdt) for n, shape in zip(layout.adapter_names, layout.adapter_shapes)]
    logits = TensorSpec("logits", ("batch", cfg.vocab_size), fdt)
    specs.append(GraphSpec(
        "prefill", PrefillGraph(llama, layout),
        [TensorSpec("embeds", ("batch", "seq", cfg.dim), fdt), TensorSpec("positions", ("batch", "seq"), "int64"),
         TensorSpec("key_mask", ("batch", "seq"), "bool"), TensorSpec("prompt_mask", ("batch", "seq"), "bool")],
        [logits, *(TensorSpec(n, kv("seq"), fdt) for n in layout.present()), *adapters]))
    specs.append(GraphSpec(
        "decode", DecodeGraph(llama, layout),
        [TensorSpec("token", ("batch",), "int64"), TensorSpec("position", ("batch",), "int64"),
         TensorSpec("length", (), "int64"), TensorSpec("key_mask", ("batch", "slots"), "bool"),
         *(TensorSpec(n, kv("slots"), fdt) for n in layout.past()), *adapters],
        [logits, *(TensorSpec(n, kv("slots"), fdt) for n in layout.present())]))
    for spec in specs:
        names = spec.module.input_names(), spec.module.output_names()
        assert names == ([t.name for t in spec.inputs], [t.name for t in spec.outputs]), (spec.name, names)
    return specs, layout


def example_inputs(spec: GraphSpec, dims: dict[str, int], vocab: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Valid inputs of the given dim sizes: token ids in the vocabulary, positions counting up to
    each example's end (left-padded), masks with at least one visible slot per row; a decode step
    writes slot slots-2 (the last slot stays unfilled), at that position."""
    out = []
    length = max(0, dims["slots"] - 2)
    for t in spec.inputs:
        shape = tuple(dims[d] if isinstance(d, str) else d for d in t.shape)
        if t.dtype == "bool":
            x = torch.rand(shape, generator=gen) < 0.7
            if len(shape) == 2:
                x[:, -1] = True
        elif t.name in ("tokens", "token"):
            x = torch.randint(1, vocab, shape, generator=gen)
        elif t.name == "positions":
            x = torch.arange(shape[-1]).expand(shape).clone()
        elif t.name in ("position", "length"):
            x = torch.full(shape, length)
        else:
            x = (torch.randn(shape, generator=gen) * (0.02 if t.name == "embeds" else 1.0)).to(getattr(torch, t.dtype))
        out.append(x)
    return out


def export_graph(spec: GraphSpec, path: Path, vocab: int, data: ExternalData | None = None) -> None:
    """Trace spec.module on example inputs and write path; its weights go to `data`, the folder's
    shared external data file (pass one ExternalData to all graphs of a folder: each distinct
    tensor is then written once, and a runtime holds it once for all graphs; a protobuf could
    not hold a 7B graph's weights anyway). The file's I/O must match the spec."""
    gen = torch.Generator().manual_seed(0)
    args = tuple(example_inputs(spec, EXAMPLE_DIMS, vocab, gen))
    axes = {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)} for t in spec.inputs + spec.outputs}
    # The exporter writes a model over 2 GiB as one file per tensor beside the graph, named after
    # the tensor, so each graph is staged alone and saved again as graph + the data file.
    staging = path.parent / f".{path.name}.staging"
    staging.mkdir()
    try:
        with torch.no_grad(), warnings.catch_warnings(), export_symbolics(OPSET):
            # the TorchScript exporter announces its own deprecation and traces shape arithmetic
            warnings.simplefilter("ignore")
            torch.onnx.export(spec.module.eval(), args, str(staging / path.name),
                              input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
                              dynamic_axes=axes, opset_version=OPSET, dynamo=False)
        proto = onnx.load(str(staging / path.name))
    finally:
        shutil.rmtree(staging)
    restore_unused_inputs(proto, spec)
    check_io(proto, spec)
    data = data or ExternalData(path.parent / WEIGHTS_FILE)
    moved = data.move_out(proto)
    spec.data_file = data.path.name if moved else None
    spec.weights = [{"name": name, "offset": offset, "dtype": ONNX_DTYPES[code], "shape": list(dims)}
                    for name, offset, code, dims in moved if code in ONNX_DTYPES]
    onnx.save(proto, str(path))


def restore_unused_inputs(proto: onnx.ModelProto, spec: GraphSpec) -> None:
    """The exporter drops inputs the graph never reads (prompt_mask of a model without adapters);
    they are put back, unread, so every graph of a kind has the same I/O."""
    present = {v.name for v in proto.graph.input}
    codes = {name: code for code, name in ONNX_DTYPES.items()}
    inputs = []
    for t in spec.inputs:
        if t.name in present:
            inputs.append(next(v for v in proto.graph.input if v.name == t.name))
        else:
            inputs.append(onnx.helper.make_tensor_value_info(t.name, codes[t.dtype], list(t.shape)))
    del proto.graph.input[:]
    proto.graph.input.extend(inputs)


def check_io(proto: onnx.ModelProto, spec: GraphSpec) -> None:
    """The file's I/O must be the spec's (names, order, dtypes, sizes); a dim the exporter could
    not infer (an auto-generated name) gets the declared size or name, and verification then
    checks the sizes ONNX Runtime actually returns."""
    for kind, declared, actual in (("input", spec.inputs, proto.graph.input), ("output", spec.outputs, proto.graph.output)):
        if [v.name for v in actual] != [t.name for t in declared]:
            raise AssertionError(f"{spec.file}: {kind}s {[v.name for v in actual]}, declared {[t.name for t in declared]}")
        for v, t in zip(actual, declared):
            tensor_type = v.type.tensor_type
            dtype = ONNX_DTYPES.get(tensor_type.elem_type, str(tensor_type.elem_type))
            dims = tensor_type.shape.dim
            if dtype != t.dtype or len(dims) != len(t.shape):
                raise AssertionError(f"{spec.file}: {kind} {v.name} is {dtype}{len(dims)}-d, declared {t.dtype} {t.shape}")
            for d, want in zip(dims, t.shape):
                if d.dim_param and d.dim_param not in DIM_NAMES:
                    d.Clear()
                    setattr(d, "dim_param" if isinstance(want, str) else "dim_value", want)
                elif (d.dim_param or d.dim_value) != want:
                    raise AssertionError(f"{spec.file}: {kind} {v.name} has shape "
                                         f"{[x.dim_param or x.dim_value for x in dims]}, declared {t.shape}")
