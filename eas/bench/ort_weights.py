"""One copy of each weight for all the ONNX Runtime sessions of a benchmark.

Every exported graph carries its own weights: the prefill and decode graphs of one model each hold
all of them, and the variants of one run (base, EAS-K static, dynamic, floor) share most tensors.
At LLaMA-7B width that is ~4 GB per graph, so three graphs per variant and four variants do not fit
a 24 GiB machine. Here each large initializer of a graph is read once, keyed by its content, and
handed to every session that has it (SessionOptions.add_initializer: ONNX Runtime reads the
caller's buffer instead of the file), so a tensor the graphs or variants share is held once.

add_initializer takes the buffer as it is (add_external_initializers copies it), but ONNX Runtime
still pre-packs each MatMul weight into a private copy per session unless told not to
(measured on dim 1024: 408 MB of growth per session with pre-packing, 7 MB without). Pre-packing
is faster (tiny decode ~1.5x, dim 512 ~1.1x, measured on a busy machine), so it is switched off only where the copies would
not fit in memory (prepack_fits).
"""
from __future__ import annotations

import hashlib
import weakref
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper

# Smaller initializers (norm weights, RoPE tables, shape constants) stay in the graph.
MIN_SHARED_BYTES = 1 << 16
PLACEHOLDER = "shared-weights.none"  # what the graph names as the pooled tensors' file; empty


class Tensor:
    """One pooled weight: the array and the OrtValue over its buffer (ONNX Runtime does not copy it,
    so whoever runs a session keeps these alive: Ort.held)."""

    def __init__(self, array: np.ndarray):
        import onnxruntime as ort
        self.array, self.value = array, ort.OrtValue.ortvalue_from_numpy(array)


class SharedWeights:
    """Content key -> Tensor, held weakly: a tensor leaves the pool with the last session reading it.
    prepack: let ONNX Runtime pre-pack MatMul weights (a private copy per session)."""

    def __init__(self, prepack: bool = True):
        self.pool: weakref.WeakValueDictionary[tuple, Tensor] = weakref.WeakValueDictionary()
        self.prepack = prepack

    def session(self, path: Path, options, providers: list[str]):
        """An InferenceSession of the graph at `path` whose large initializers come from the pool;
        returns (session, the pooled Tensors it reads: keep them as long as the session). The
        graph file is rewritten without those weights."""
        import onnxruntime as ort
        proto = onnx.load(str(path), load_external_data=False)
        used = {}
        for t in proto.graph.initializer:
            if nbytes(t) < MIN_SHARED_BYTES:
                continue
            array = read_tensor(t, path.parent)
            key = (array.dtype.str, array.shape, hashlib.blake2b(array).digest())
            tensor = self.pool.get(key)
            if tensor is None:
                tensor = self.pool[key] = Tensor(array)
            used[t.name] = tensor
            options.add_initializer(t.name, tensor.value)
            external(t, array.nbytes)
        if not self.prepack:
            options.add_session_config_entry("session.disable_prepacking", "1")
        # The loader checks that an external data file exists before it learns the data is given.
        (path.parent / PLACEHOLDER).touch()
        onnx.save(proto, str(path))
        return ort.InferenceSession(str(path), options, providers=providers), list(used.values())


def nbytes(t: onnx.TensorProto) -> int:
    return int(np.prod(t.dims, dtype=np.int64)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def read_tensor(t: onnx.TensorProto, folder: Path) -> np.ndarray:
    """t's values; a tensor in an external data file is read alone (a 7B-width graph's weights are
    never all in memory twice)."""
    if t.data_location != onnx.TensorProto.EXTERNAL:
        return np.ascontiguousarray(numpy_helper.to_array(t))
    info = external_data_helper.ExternalDataInfo(t)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
    count = int(np.prod(t.dims, dtype=np.int64))
    array = np.fromfile(folder / info.location, dtype=dtype, count=count, offset=info.offset or 0)
    if array.size != count:
        raise ValueError(f"{folder / info.location}: {t.name} needs {count} values at offset {info.offset}")
    return array.reshape(tuple(t.dims))


def external(t: onnx.TensorProto, nbytes: int) -> None:
    """Drop t's data and mark it external: ONNX Runtime then takes it from add_initializer."""
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data"):
        t.ClearField(field)
    t.data_location = onnx.TensorProto.EXTERNAL
    del t.external_data[:]
    for key, value in (("location", PLACEHOLDER), ("offset", "0"), ("length", str(nbytes))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value


def prepack_fits(weight_bytes: int, sessions: int) -> bool:
    """Whether `sessions` pre-packed copies of `weight_bytes` fit in half of the memory available
    now (Linux /proc/meminfo; elsewhere assumed to fit)."""
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return True
    return weight_bytes * sessions < available // 2
