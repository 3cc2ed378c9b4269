"""TensorRT engines from the exported graphs: built for real on the CPU with tensorrt_rtx (its
parsed I/O and profile ranges equal the manifest's); run only where a GPU is visible."""
import json

import pytest
import torch

from export import pipeline
from export.runtime import load_manifest
from export.trt_build import INSTALL_HINT, build_engine, profile_shapes, tensorrt_module
from export_fixtures import exported, make_merged, make_tokenizer

trt = tensorrt_module()
needs_trt = pytest.mark.skipif(trt is None, reason=INSTALL_HINT)
needs_gpu = pytest.mark.skipif(trt is None or not torch.cuda.is_available(),
                               reason="running an engine needs a CUDA GPU and TensorRT (tensorrt_rtx only builds here)")


@needs_trt
def test_engine_of_each_graph_has_the_manifest_io_and_profile_ranges():
    folder = exported("lavin", "dynamic")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["graphs"]) == {"embed", "vision", "prefill", "decode"}
    for name, graph in manifest["graphs"].items():
        blob, built = build_engine(trt, folder / graph["file"], profile_shapes(graph["inputs"], manifest["profiles"]))
        assert len(blob) > 100_000, name
        assert built["inputs"] == [t["name"] for t in graph["inputs"]]
        assert built["outputs"] == [t["name"] for t in graph["outputs"]]
        for t in graph["inputs"]:  # each dim's [min, opt, max] as TensorRT holds it
            lo, opt, hi = built["profile"][t["name"]]
            for i, d in enumerate(t["shape"]):
                want = manifest["profiles"][d] if isinstance(d, str) else [d] * 3
                assert [lo[i], opt[i], hi[i]] == want, (name, t["name"], d)
                assert lo[i] >= 1


@needs_trt
def test_the_export_writes_engines_into_the_manifest(tmp_path):
    tok = make_tokenizer(tmp_path)
    merged = make_merged(tmp_path / "m", tok, "text", "static")
    manifest = pipeline.export_model(merged, tmp_path / "out", max_batch=3, max_seq=40, log=lambda line: None)
    assert manifest["engines"]["builder"].startswith(trt.__name__)
    assert set(manifest["engines"]["graphs"]) == {"embed", "prefill", "decode"}
    for entry in manifest["engines"]["graphs"].values():
        assert (tmp_path / "out" / entry["file"]).stat().st_size > 100_000
    assert manifest["engines"]["graphs"]["decode"]["profile"]["past.k.1"] == [[1, 2, 1, 16], [1, 2, 20, 16], [3, 2, 40, 16]]
    assert load_manifest(tmp_path / "out") == manifest


def test_without_tensorrt_the_export_stops_after_onnx_saying_how_to_install(tmp_path, monkeypatch):
    tok = make_tokenizer(tmp_path)
    merged = make_merged(tmp_path / "m", tok, "text", "dynamic")
    monkeypatch.setattr(pipeline, "tensorrt_module", lambda: None)
    lines = []
    manifest = pipeline.export_model(merged, tmp_path / "out", log=lines.append)
    assert manifest["engines"] == {} and not list((tmp_path / "out").glob("*.engine"))
    assert lines[-1] == f"stopped after ONNX: {INSTALL_HINT}"


@needs_gpu
@pytest.mark.parametrize("kind", ["lavin", "text"])
def test_engines_generate_the_ort_tokens(kind, tmp_path):
    from export.ort_runtime import OrtRuntime
    from export.trt_runtime import TrtRuntime
    from test_export_runtime import BATCH_3, PHOTOS
    tok = make_tokenizer(tmp_path)
    merged = make_merged(tmp_path / "m", tok, kind, "dynamic")
    pipeline.export_model(merged, tmp_path / "out", log=lambda line: None)
    prompts = [p for p, _ in BATCH_3]
    images = [None if i is None or kind == "text" else PHOTOS[i] for _, i in BATCH_3]
    assert TrtRuntime(tmp_path / "out").generate(prompts, images, 16) == OrtRuntime(tmp_path / "out").generate(prompts, images, 16)
