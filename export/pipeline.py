"""merged.pt -> a deployment folder: ONNX graphs, verification, manifest.json, TensorRT engines.

Everything is written into a temporary folder beside the destination and moved into place only
when complete, so a failure never leaves a partial export behind.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from eas.adapters.attach import llama_of
from eas.errors import TokenizerError, UsageError
from eas.io.merged import load_merged
from eas.model.tokenizer import Tokenizer
from export.manifest import FORMAT, TOKENIZER_FILE, build_manifest
from export.external_data import FILE as WEIGHTS_FILE, ExternalData
from export.onnx_export import export_graph, graph_specs
from export.trt_build import INSTALL_HINT, build_engines, tensorrt_module
from export.verify import verify

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def default_out(merged: Path) -> Path:
    return merged.parent / f"{merged.stem}-export"


def check_args(dtype: str, max_batch: int, max_seq: int) -> None:
    if dtype not in DTYPES:
        raise UsageError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if max_batch < 1:
        raise UsageError(f"--max-batch must be at least 1, got {max_batch}")
    if max_seq < 2:
        raise UsageError(f"--max-seq must be at least 2 (a prompt slot and a generated one), got {max_seq}")


def load_tokenizer(model, merged: Path) -> Tokenizer:
    ref = model.tokenizer_ref
    if ref is None:
        raise TokenizerError(f"{merged} names no tokenizer (save_merged(..., tokenizer=...) records one)")
    try:
        tok = Tokenizer(ref)
    except TokenizerError as e:  # named again with the merged.pt that refers to it
        raise TokenizerError(f"{merged}: tokenizer: {e}") from e
    vocab = llama_of(model).cfg.vocab_size
    if tok.vocab_size > vocab:
        raise TokenizerError(f"{merged}: tokenizer {ref} has {tok.vocab_size} pieces, the model {vocab} embeddings")
    return tok


def check_destination(out: Path) -> None:
    """An existing destination is replaced only when it is an earlier export."""
    if not out.exists():
        return
    manifest = out / "manifest.json"
    try:
        ours = json.loads(manifest.read_text())["format"] == FORMAT
    except (OSError, ValueError, KeyError, TypeError):
        ours = False
    if not ours:
        raise UsageError(f"--out {out} exists and is not an earlier export (no {FORMAT} manifest.json); "
                         f"choose another folder")


def export_model(merged: Path, out: Path, dtype: str = "fp32", max_batch: int = 4, max_seq: int | None = None,
                 onnx_only: bool = False, log: Callable[[str], None] = print) -> dict:
    """Export, verify and (with a TensorRT module, unless onnx_only) build engines; returns the manifest."""
    start = time.perf_counter()
    check_args(dtype, max_batch, max_seq if max_seq is not None else 2)
    model = load_merged(merged, "cpu", DTYPES[dtype])
    cfg = llama_of(model).cfg
    max_seq = cfg.max_seq_len if max_seq is None else max_seq
    if max_seq > 2 * cfg.max_seq_len:
        raise UsageError(f"--max-seq {max_seq} exceeds the model's {2 * cfg.max_seq_len} RoPE positions")
    tok = load_tokenizer(model, merged)
    trt = None if onnx_only else tensorrt_module()
    check_destination(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    except OSError as e:
        raise UsageError(f"cannot create the export folder in {out.parent}: {e.strerror or e}") from e
    umask = os.umask(0)
    os.umask(umask)
    work.chmod(0o777 & ~umask)  # mkdtemp's 0700 would become the export's permissions
    try:
        specs, layout = graph_specs(model)
        data = ExternalData(work / WEIGHTS_FILE)  # one copy of each weight for all large graphs
        for spec in specs:
            export_graph(spec, work / spec.file, cfg.vocab_size, data)
        log(f"exported {', '.join(s.file for s in specs)} in {time.perf_counter() - start:.1f} s")
        shutil.copyfile(tok.path, work / TOKENIZER_FILE)
        manifest = build_manifest(model, specs, layout, tok, dtype, max_batch, max_seq, str(merged))
        manifest["verification"] = verify(model, specs, work, tok, manifest["sequence"], dtype)
        worst = {g: max(e.values()) for g, e in manifest["verification"].items()}
        log("verified against PyTorch in ONNX Runtime, worst relative error per graph: "
            + ", ".join(f"{g} {e:.1e}" for g, e in worst.items()))
        if trt is not None:
            manifest["engines"] = build_engines(trt, work, manifest)
            log(f"built TensorRT engines with {manifest['engines']['builder']}")
        (work / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        replace_folder(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log(f"wrote {out} in {time.perf_counter() - start:.1f} s")
    if trt is None and not onnx_only:
        log(f"stopped after ONNX: {INSTALL_HINT}")
    return manifest


def replace_folder(new: Path, out: Path) -> None:
    """Move a finished export into place; an earlier export there goes only once the new one is in."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        out.rename(old / out.name)
    new.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
