"""TensorRT engines from the exported ONNX graphs, one optimization profile per graph.

The same code drives `tensorrt` (a GPU machine with TensorRT) or `tensorrt_rtx` (pip
`tensorrt-rtx`; builds engines ahead of time on a machine without a GPU). Networks are strongly
typed: the ONNX graph's dtypes are the precision plan (fp16 graphs keep their fp32 islands).
Running an engine needs a GPU and is left to the runtimes.
"""
from __future__ import annotations

import importlib
import time
from pathlib import Path

from eas.errors import EASError

INSTALL_HINT = ("no TensorRT Python module: `pip install tensorrt-rtx` builds engines on any Linux x86-64 "
                "machine (no GPU needed); on a GPU machine with TensorRT, install NVIDIA's `tensorrt` wheel")


class EngineError(EASError):
    """TensorRT could not parse a graph or build its engine."""


def tensorrt_module():
    """`tensorrt` when importable, else `tensorrt_rtx`, else None."""
    for name in ("tensorrt", "tensorrt_rtx"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def profile_shapes(inputs: list[dict], profiles: dict[str, list[int]]) -> dict[str, list[list[int]]]:
    """{input: [min, opt, max] shapes} from the manifest's I/O specs and dim ranges."""
    return {t["name"]: [[profiles[d][i] if isinstance(d, str) else d for d in t["shape"]] for i in range(3)]
            for t in inputs}


def parse(trt, onnx_path: Path):
    """(builder, network, parser) holding the parsed graph; parser errors become EngineError."""
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(parser.get_error(i).desc() for i in range(parser.num_errors))
        raise EngineError(f"TensorRT cannot parse {onnx_path}: {errors}")
    return builder, network, parser


def network_io(network) -> dict[str, list[str]]:
    return {"inputs": [network.get_input(i).name for i in range(network.num_inputs)],
            "outputs": [network.get_output(i).name for i in range(network.num_outputs)]}


def build_engine(trt, onnx_path: Path, shapes: dict[str, list[list[int]]]) -> tuple[bytes, dict]:
    """Serialized engine and what was built: parsed I/O names, the profile as TensorRT holds it, seconds."""
    builder, network, _parser = parse(trt, onnx_path)
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    start = time.perf_counter()
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise EngineError(f"TensorRT could not build an engine from {onnx_path} with profile {shapes}")
    held = {name: [list(s) for s in profile.get_shape(name)] for name in shapes}
    return bytes(engine), {**network_io(network), "profile": held, "seconds": time.perf_counter() - start}


def build_engines(trt, folder: Path, manifest: dict) -> dict:
    """Write {graph}.engine for every graph in the manifest; returns its "engines" section."""
    engines = {}
    for name, graph in manifest["graphs"].items():
        shapes = profile_shapes(graph["inputs"], manifest["profiles"])
        blob, built = build_engine(trt, folder / graph["file"], shapes)
        (folder / f"{name}.engine").write_bytes(blob)
        engines[name] = {"file": f"{name}.engine", "profile": shapes, "build_seconds": round(built["seconds"], 3)}
    return {"builder": f"{trt.__name__} {trt.__version__}", "graphs": engines}
