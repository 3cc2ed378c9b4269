"""ONNX Runtime backend of the generation loop (export/runtime.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from eas.errors import CheckpointError
from export.runtime import Runtime


def open_session(path: Path, want_cuda: bool) -> ort.InferenceSession:
    """CUDA only when asked for and available; onnxruntime-gpu lists CUDA even on machines without
    a GPU and quietly runs on the CPU, so callers read what the session really got."""
    providers = ["CPUExecutionProvider"]
    if want_cuda and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    if not path.is_file():
        raise CheckpointError(f"graph {path} named by the manifest does not exist")
    try:
        return ort.InferenceSession(str(path), providers=providers)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf/... types for a bad file
        raise CheckpointError(f"ONNX Runtime cannot load {path}: {str(e).strip().splitlines()[0]}") from e


def check_session(session: ort.InferenceSession, graph: dict, path: Path) -> None:
    """The graph's input and output names must be the manifest's: a manifest of another export is refused."""
    for side, declared, actual in (("inputs", graph["inputs"], session.get_inputs()),
                                   ("outputs", graph["outputs"], session.get_outputs())):
        want, got = [t["name"] for t in declared], [t.name for t in actual]
        if sorted(want) != sorted(got):
            raise CheckpointError(f"{path} has {side} {got}, the manifest declares {want}: the manifest does not "
                                  f"belong to this graph")


class OrtRuntime(Runtime):
    def __init__(self, folder: str | Path, cuda: bool = False):
        super().__init__(folder)
        self.sessions = {}
        for name, graph in self.manifest["graphs"].items():
            self.sessions[name] = open_session(self.folder / graph["file"], cuda)
            check_session(self.sessions[name], graph, self.folder / graph["file"])
        # What the sessions really run on (the first provider of each).
        self.providers = {name: s.get_providers()[0] for name, s in self.sessions.items()}

    def run(self, graph: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.sessions[graph].run(None, feed)

    def run_into(self, graph: str, feed: dict[str, np.ndarray], into: dict[str, str]) -> dict[str, np.ndarray]:
        """The outputs in `into` are bound to their inputs' arrays: the decode graph's scatter finds
        its output in its input's memory and writes only the new slot (no copy of the cache)."""
        session, bind = self.sessions[graph], self.sessions[graph].io_binding()
        values = {name: ort.OrtValue.ortvalue_from_numpy(np.require(a, requirements="C")) for name, a in feed.items()}
        for name, value in values.items():
            bind.bind_ortvalue_input(name, value)
        rest = [o.name for o in session.get_outputs() if o.name not in into]
        for name in rest:
            bind.bind_output(name)
        for output, name in into.items():
            if not feed[name].flags.c_contiguous:
                raise ValueError(f"{graph}: input {name} must be one contiguous array to receive {output}")
            bind.bind_ortvalue_output(output, values[name])
        session.run_with_iobinding(bind)
        # outputs in the order bound, `rest` first; only those are converted (copy_outputs_to_cpu
        # would copy the whole cache too)
        return {name: value.numpy() for name, value in zip(rest, bind.get_outputs())}
