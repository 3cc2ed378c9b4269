"""TensorRT backend of the generation loop (export/runtime.py): the engines the export built.

Needs a CUDA GPU and `tensorrt` or `tensorrt_rtx`; device memory comes from torch. Each call
copies numpy inputs to the GPU and outputs back, which keeps the loop shared with ONNX Runtime
(a C++ runtime would keep K/V on the device and swap past/present bindings instead).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from eas.errors import CheckpointError, UsageError
from export.runtime import Runtime
from export.trt_build import INSTALL_HINT, tensorrt_module


def torch_dtype(trt, dtype) -> torch.dtype:
    return {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT64: torch.int64,
            trt.DataType.INT32: torch.int32, trt.DataType.BOOL: torch.bool}[dtype]


class TrtRuntime(Runtime):
    def __init__(self, folder: str | Path):
        super().__init__(folder)
        self.trt = tensorrt_module()
        if self.trt is None:
            raise UsageError(INSTALL_HINT)
        if not torch.cuda.is_available():
            raise UsageError("running TensorRT engines needs a CUDA GPU; none is visible")
        engines = self.manifest["engines"].get("graphs")
        if not engines:
            raise CheckpointError(f"{self.folder / 'manifest.json'} lists no engines: export again without --onnx-only "
                                  f"where a TensorRT module is installed")
        runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.ERROR))
        self.engines, self.contexts = {}, {}
        for name, entry in engines.items():
            engine = runtime.deserialize_cuda_engine((self.folder / entry["file"]).read_bytes())
            if engine is None:
                raise CheckpointError(f"{self.folder / entry['file']}: TensorRT cannot load this engine (built by "
                                      f"{self.manifest['engines']['builder']} for another version or GPU?)")
            self.check_engine(name, engine)
            self.engines[name], self.contexts[name] = engine, engine.create_execution_context()

    def check_engine(self, name: str, engine) -> None:
        """The engine's I/O names must be the manifest's (a manifest from another export is refused)."""
        graph = self.manifest["graphs"][name]
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        declared = [t["name"] for t in graph["inputs"] + graph["outputs"]]
        if sorted(names) != sorted(declared):
            raise CheckpointError(f"{self.folder / (name + '.engine')} has I/O {names}, the manifest declares {declared}")

    def run(self, graph: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        context, engine = self.contexts[graph], self.engines[graph]
        keep = []
        for t in self.manifest["graphs"][graph]["inputs"]:
            x = torch.from_numpy(np.require(feed[t["name"]], requirements="C")).to(  # keeps 0-d
                "cuda", torch_dtype(self.trt, engine.get_tensor_dtype(t["name"])))
            context.set_input_shape(t["name"], tuple(x.shape))
            context.set_tensor_address(t["name"], x.data_ptr())
            keep.append(x)
        outputs = []
        for t in self.manifest["graphs"][graph]["outputs"]:
            shape = tuple(context.get_tensor_shape(t["name"]))
            y = torch.empty(shape, dtype=torch_dtype(self.trt, engine.get_tensor_dtype(t["name"])), device="cuda")
            context.set_tensor_address(t["name"], y.data_ptr())
            outputs.append(y)
        # torch's current stream: the input copies above were queued on it
        if not context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError(f"TensorRT failed to run the {graph} engine")
        return [y.cpu().numpy() for y in outputs]
