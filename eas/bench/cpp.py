"""The C++ app's generation loop as a benchmark backend, "ort-cpp": `eas_serve` (export/cpp).

The model's graphs are exported as for the Python ONNX Runtime backend and written with a manifest
(export/manifest.py's graph and state sections; its tokenizer, prompt and sequence sections are
SYNTHETIC, as ids go in directly). `eas_serve` loads them in a child process, runs the app's own
Decoder (export/cpp/src/generate.h) and answers one line per command, so each prefill and each
chunk of decode steps is timed here, the pipe round trip included (tens of microseconds a call).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from eas.bench.runner import proc_status
from eas.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]


def app() -> Path:
    """Where export/cpp/build.sh puts eas_serve (EAS_CPP_BUILD: its other build folder)."""
    return Path(os.environ.get("EAS_CPP_BUILD") or ROOT / "export" / "cpp" / "build") / "cmake" / "eas_serve"


def missing() -> str | None:
    """Why the C++ app cannot be timed here, or None."""
    if not app().is_file():
        return f"ort-cpp skipped: {app()} is not built (bash export/cpp/build.sh)"
    return None


def write_export(model, folder: Path, slots: int) -> None:
    """The model's embed / prefill / decode graphs and a manifest the app reads, in `folder`."""
    from export.external_data import FILE, ExternalData
    from export.manifest import FORMAT, VERSION, graph_sections
    from export.onnx_export import export_graph, graph_specs
    specs, layout = graph_specs(model)
    data = ExternalData(folder / FILE)
    for spec in specs:
        export_graph(spec, folder / spec.file, model.cfg.vocab_size, data)
    synthetic = "none: token ids are fed directly (SYNTHETIC, eas/bench/cpp.py)"
    manifest = {"format": FORMAT, "version": VERSION, "source": "eas/bench: RANDOM (SYNTHETIC) weights",
                "dtype": "fp32", **graph_sections(specs, layout, 1, slots),
                "tokenizer": {"file": synthetic, "eos_id": -1},
                "sequence": {"kind": "text", "bos_id": -1, "eos_id": -1, "pad_id": -1, "slot_id": -1},
                "prompt": {"format": {"task": synthetic, "template": "{question}", "max_new_tokens": 1}}}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))


class CppOrt:
    """A model in a child `eas_serve` (ONNX Runtime, CPU), batch 1. weights: the child's peak
    resident size (the mapped weights file's pages and the one pre-packed copy its graphs share)."""

    def __init__(self, model, slots: int, threads: int):
        reason = missing()
        if reason:
            raise UsageError(reason)
        folder = Path(tempfile.mkdtemp(prefix="eas-bench-cpp-"))
        try:
            write_export(model, folder, slots)
            self.proc = subprocess.Popen([str(app()), "--engine", str(folder), "--threads", str(threads)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True, bufsize=1)
            self.ask(None)  # "ready": the graphs are loaded, so their files may go
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def ask(self, command: str | None) -> str:
        if command is not None:
            self.proc.stdin.write(command + "\n")
        reply = self.proc.stdout.readline()
        if not reply:
            err = self.proc.stderr.read().strip().splitlines()
            raise RuntimeError(f"eas_serve stopped ({self.proc.wait()}): {err[-1] if err else 'no message'}")
        return reply.strip()

    def prefill(self, tokens: np.ndarray, slots: int) -> np.ndarray:
        if tokens.shape[0] != 1:
            raise UsageError("the C++ app runs batch 1 only")
        return np.array([int(self.ask(f"prefill {slots} " + " ".join(map(str, tokens[0].tolist()))))])

    def decode(self, token: np.ndarray, steps: int) -> np.ndarray:
        return np.array([int(self.ask(f"decode {int(token[0])} {steps}"))])

    def kv_bytes(self) -> int:
        return int(self.ask("kv"))

    @property
    def weights(self) -> int:
        return proc_status("VmHWM:", self.proc.pid) or 0

    def __del__(self):
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.stdin.close()
            proc.wait(timeout=30)
