"""One external data file for the weights of all the graphs of an export folder.

The prefill and decode graphs of a model hold the same weights (and embed and decode the same
embedding table); saved inline or one data file per graph, an export kept its layers twice on
disk, and a runtime loaded them twice. Here each distinct tensor (dtype, shape and bytes) is written once and every graph that has it points
at the same offset. ONNX Runtime and TensorRT's parser resolve a graph's external data by file
name, offset and length relative to the graph, so graphs sharing one file need nothing else;
the manifest lists each graph's tensors in the file, so the C++ app maps them once for all graphs.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import onnx

FILE = "weights.data"
MIN_BYTES = 1024  # smaller tensors (norm gains, shape constants) stay in the graph (onnx's default)
# Tensors of 1 MiB and more start at a multiple of 64 KiB (the largest allocation granularity,
# Windows'), so a runtime can map them from the file instead of reading them (onnx's own rule);
# the others at a multiple of 64 bytes (a cache line), so a mapped tensor is aligned as allocated.
ALIGN_BYTES, ALIGNMENT, SMALL_ALIGNMENT = 1 << 20, 1 << 16, 64


class ExternalData:
    def __init__(self, path: Path):
        self.path = path
        self.offsets: dict[tuple, int] = {}
        self.size = path.stat().st_size if path.exists() else 0

    def move_out(self, proto: onnx.ModelProto) -> list[tuple[str, int, int, tuple[int, ...]]]:
        """Put the proto's large initializers into the file (once per distinct tensor) and point
        the graph at them; the caller saves the proto. Returns (name, offset, ONNX data type,
        dims) of each: what a runtime needs to map them once for all graphs (export/cpp)."""
        moved = []
        large = [t for t in proto.graph.initializer
                 if t.data_location != onnx.TensorProto.EXTERNAL and len(t.raw_data) >= MIN_BYTES]
        if not large:
            return moved
        with open(self.path, "ab") as f:
            for t in large:
                data = t.raw_data
                key = (t.data_type, tuple(t.dims), hashlib.blake2b(data).digest())
                if key not in self.offsets:
                    pad = -self.size % (ALIGNMENT if len(data) >= ALIGN_BYTES else SMALL_ALIGNMENT)
                    f.write(b"\0" * pad + data)
                    self.offsets[key] = self.size + pad
                    self.size += pad + len(data)
                t.ClearField("raw_data")
                t.data_location = onnx.TensorProto.EXTERNAL
                del t.external_data[:]
                for k, v in (("location", self.path.name), ("offset", str(self.offsets[key])), ("length", str(len(data)))):
                    entry = t.external_data.add()
                    entry.key, entry.value = k, v
                moved.append((t.name, self.offsets[key], t.data_type, tuple(t.dims)))
        return moved
