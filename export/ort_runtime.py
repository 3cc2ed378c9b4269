"""ONNX Runtime backend of the generation loop (export/runtime.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.runtime import Runtime


def open_session(path: Path, want_cuda: bool) -> ort.InferenceSession:
    """CUDA only when asked for and available; onnxruntime-gpu lists CUDA even on machines without
    a GPU and quietly runs on the CPU, so callers read what the session really got."""
    providers = ["CPUExecutionProvider"]
    if want_cuda and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), providers=providers)


class OrtRuntime(Runtime):
    def __init__(self, folder: str | Path, cuda: bool = False):
        super().__init__(folder)
        self.sessions = {name: open_session(self.folder / g["file"], cuda) for name, g in self.manifest["graphs"].items()}
        # What the sessions really run on (the first provider of each).
        self.providers = {name: s.get_providers()[0] for name, s in self.sessions.items()}

    def run(self, graph: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.sessions[graph].run(None, feed)
