"""export/to_trt.py: ONNX graphs of merged models, verified in ONNX Runtime against PyTorch; the
manifest against the files themselves; bad input as one line, exit 2, nothing left behind."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from eas.io.merged import load_merged
from export import pipeline
from export.onnx_export import ONNX_DTYPES
from export.to_trt import main
from export.verify import VerificationError
from export_fixtures import SKIP, exported, make_merged, make_tokenizer
from helpers import rel_err

CASES = [("lavin", "static"), ("lavin", "dynamic"), ("text", "static"), ("text", "dynamic")]
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kind,mode", CASES)
def test_every_graph_matches_pytorch_and_the_manifest_describes_the_files(kind, mode):
    folder = exported(kind, mode)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["graphs"]) == ({"embed", "vision", "prefill", "decode"} if kind == "lavin"
                                       else {"embed", "prefill", "decode"})
    assert manifest["merge"]["mode"] == mode and manifest["merge"]["no_attention"] == list(SKIP)
    # verified on random and real inputs: every output of every graph, fp32 within 1e-4
    for graph, errors in manifest["verification"].items():
        assert set(errors) == {t["name"] for t in manifest["graphs"][graph]["outputs"]}
        assert max(errors.values()) <= 1e-4, (graph, errors)
    for name, graph in manifest["graphs"].items():
        proto = onnx.load(str(folder / graph["file"]))
        for declared, actual in (("inputs", proto.graph.input), ("outputs", proto.graph.output)):
            got = [{"name": v.name, "dtype": ONNX_DTYPES[v.type.tensor_type.elem_type],
                    "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]} for v in actual]
            assert got == graph[declared], (name, declared)
    assert all(lo >= 1 for lo, _, _ in manifest["profiles"].values())


@pytest.mark.parametrize("kind,mode", CASES)
def test_decode_graph_carries_kv_of_kept_layers_only(kind, mode):
    manifest = json.loads((exported(kind, mode) / "manifest.json").read_text())
    n_layers, kept = manifest["model"]["n_layers"], [i for i in range(4) if i not in SKIP]
    decode = manifest["graphs"]["decode"]
    past = [t["name"] for t in decode["inputs"] if t["name"].startswith("past.")]
    present = [t["name"] for t in decode["outputs"] if t["name"].startswith("present.")]
    assert len(past) == len(present) == 2 * (n_layers - len(SKIP))
    assert past == [f"past.{kv}.{i}" for i in kept for kv in "kv"]
    adapters = {"static": {f"layers.{i}.ffn_shift" for i in SKIP},
                "dynamic": {f"layers.{i}.{n}" for i in SKIP for n in ("ffn_delta.route", "ffn_delta.pooled")}
                | {f"layers.{i}.attn_delta.route" for i in kept}}[mode]
    assert set(manifest["state"]["adapters"]) == adapters
    assert adapters <= {t["name"] for t in decode["inputs"]}


def test_decode_graph_writes_slot_length_of_the_kv_buffers_and_nothing_else():
    """Against the model's own state: the buffers come back unchanged except slot `length`, which
    holds what PyTorch's decode_step wrote; the unfilled slot after it stays zero."""
    folder = exported("text", "dynamic")
    model = load_merged(folder.parent / "merged.pt")
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(1, 400, (2, 6), generator=gen)
    state = model.new_state(2, 8)
    with torch.no_grad():
        _, state = model.prefill(model.tok_embeddings(tokens), torch.arange(6).expand(2, 6), torch.ones(2, 6, dtype=torch.bool), state)
        before = {k: v.clone() for k, v in state.items()}
        ref_logits, state = model.decode_step(torch.tensor([5, 9]), torch.tensor([6, 6]), state)
    manifest = json.loads((folder / "manifest.json").read_text())
    kv = [p[5:] for p in manifest["state"]["kv"]["past"]]
    feed = {"token": np.array([5, 9]), "position": np.array([6, 6]), "length": np.array(6),
            "key_mask": before["key_mask"].numpy(), **{f"past.{n}": before[n].numpy() for n in kv},
            **{n: before[n].numpy() for n in manifest["state"]["adapters"]}}
    session = ort.InferenceSession(str(folder / "decode.onnx"), providers=["CPUExecutionProvider"])
    logits, *present = session.run(None, feed)
    assert rel_err(torch.from_numpy(logits), ref_logits) < 1e-5
    for name, got in zip(kv, present):
        assert got.shape[2] == 8
        assert np.array_equal(np.delete(got, 6, 2), np.delete(before[name].numpy(), 6, 2))
        assert not state[name][:, :, 7].any() and state[name][:, :, 6].abs().sum() > 0
        assert rel_err(torch.from_numpy(got[:, :, 6]), state[name][:, :, 6]) < 1e-5


def test_a_wrong_graph_stops_the_export_naming_the_tensor(tmp_path, monkeypatch):
    tok = make_tokenizer(tmp_path)
    merged = make_merged(tmp_path / "m", tok, "text", "static")
    real_export = pipeline.export_graph

    def corrupted(spec, path, vocab, data):
        real_export(spec, path, vocab, data)
        if spec.name == "decode":  # scale the LM head: only the logits go wrong
            proto = onnx.load(str(path))
            head = next(t for t in proto.graph.initializer if list(t.dims) == [64, 400])
            head.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(head) * 1.01, head.name))
            onnx.save(proto, str(path))

    monkeypatch.setattr(pipeline, "export_graph", corrupted)
    with pytest.raises(VerificationError, match=r"decode.onnx: output logits differs from PyTorch by relative error 0.01"):
        pipeline.export_model(merged, tmp_path / "out", onnx_only=True, log=lambda line: None)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["merged.pt"]
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    tok = make_tokenizer(root)
    good = make_merged(root / "good", tok, "text", "static")
    ckpt = torch.load(good, weights_only=True)
    files = {"good": good}
    for name, change in [("old_version", {"version": 3}), ("other_kind", {"kind": "ResNetConfig"}),
                         ("no_tokenizer", {"tokenizer": "../nowhere/tokenizer.model"})]:
        files[name] = root / f"{name}.pt"
        torch.save({**ckpt, **change}, files[name])
    files["unmerged"] = root / "unmerged.pt"
    torch.save({"state_dict": ckpt["state_dict"], "config": ckpt["config"]}, files["unmerged"])
    files["random_bytes"] = root / "random.pt"
    files["random_bytes"].write_bytes(np.random.default_rng(0).bytes(4096))
    return files


@pytest.mark.parametrize("case,args,message", [
    ("old_version", [], "is merged.pt version 3; this code reads version 5"),
    ("other_kind", [], "unknown model kind 'ResNetConfig'"),
    ("unmerged", [], "is not an EAS merged checkpoint"),
    ("random_bytes", [], "is not a PyTorch checkpoint file"),
    ("no_tokenizer", [], "nowhere/tokenizer.model does not exist"),
    ("good", ["--max-batch", "0"], "--max-batch must be at least 1, got 0"),
    ("good", ["--max-seq", "0"], "--max-seq must be at least 2"),
    ("good", ["--max-seq", "100000"], "--max-seq 100000 exceeds the model's 256 RoPE positions"),
])
def test_bad_input_is_one_line_exit_2_and_no_output(case, args, message, bad_inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(bad_inputs[case]), "--out", str(out), "--onnx-only", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert str(bad_inputs[case]) in err or "--max" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_an_unrelated_output_folder_is_refused(bad_inputs, tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    assert main([str(bad_inputs["good"]), "--out", str(tmp_path), "--onnx-only"]) == 2
    assert "exists and is not an earlier export" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_the_script_prints_no_traceback(bad_inputs, tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "export" / "to_trt.py"), str(bad_inputs["random_bytes"]),
                          "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr and run.stderr.count("\n") == 1, run.stderr


def float_types(proto):
    """{tensor name: onnx elem type} after shape inference."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    return {v.name: v.type.tensor_type.elem_type for v in values} | {t.name: t.data_type for t in inferred.graph.initializer}


@pytest.mark.parametrize("kind,mode", [("lavin", "dynamic"), ("text", "static")])
def test_fp16_graphs_keep_norms_and_softmax_in_fp32_and_match_within_1e_2(kind, mode, tmp_path):
    merged = exported(kind, mode).parent / "merged.pt"
    manifest = pipeline.export_model(merged, tmp_path / "fp16", dtype="fp16", onnx_only=True, log=lambda line: None)
    for graph, errors in manifest["verification"].items():
        assert max(errors.values()) <= 1e-2, (graph, errors)
    assert 1e-5 < max(manifest["verification"]["prefill"].values())  # it really ran in fp16
    fp16, fp32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    for name, graph in manifest["graphs"].items():
        assert {t["dtype"] for t in graph["inputs"] + graph["outputs"]} <= {"float16", "int64", "bool"}
        proto = onnx.load(str(tmp_path / "fp16" / graph["file"]))
        types = float_types(proto)
        out_type = {op: {types[n.output[0]] for n in proto.graph.node if n.op_type == op}
                    for op in ("MatMul", "Softmax", "ReduceMean", "LayerNormalization")}
        assert out_type["Softmax"] <= {fp32} and out_type["ReduceMean"] <= {fp32}  # attention/router, RMSNorm
        assert out_type["LayerNormalization"] <= {fp32} and out_type["MatMul"] <= {fp16}
        if name in ("prefill", "decode"):
            assert out_type["Softmax"] and out_type["ReduceMean"] and out_type["MatMul"]
    # and against the fp32 model, not only its fp16 cast: last-position logits of a prompt
    model = load_merged(merged)
    tokens = torch.randint(1, 400, (2, 9), generator=torch.Generator().manual_seed(0))
    embeds = model.llama.tok_embeddings(tokens) if kind == "lavin" else model.tok_embeddings(tokens)
    llama = model.llama if kind == "lavin" else model
    positions, mask = torch.arange(9).expand(2, 9), torch.ones(2, 9, dtype=torch.bool)
    with torch.no_grad():
        ref, _ = llama.prefill(embeds, positions, mask, llama.new_state(2, 9))
    session = ort.InferenceSession(str(tmp_path / "fp16" / "prefill.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"embeds": embeds.detach().half().numpy(), "positions": positions.numpy(),
                                      "key_mask": mask.numpy(), "prompt_mask": mask.numpy()})[0]
    assert rel_err(torch.from_numpy(logits.astype(np.float32)), ref) < 1e-2


def test_weights_go_to_one_shared_data_file_each_tensor_once(tmp_path):
    """Graphs + one weights.data that holds each distinct tensor once (prefill and decode share
    the weights), aligned, and listed per graph in the manifest as the graph points at it."""
    merged = exported("text", "dynamic").parent / "merged.pt"
    manifest = pipeline.export_model(merged, tmp_path / "out", onnx_only=True, log=lambda line: None)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", "tokenizer.model", "weights.data",
                                                            *(f"{g}.onnx" for g in ("embed", "prefill", "decode"))])
    assert {g["data_file"] for g in manifest["graphs"].values()} == {"weights.data"}
    refs = {}  # (offset, length) -> the graphs pointing there
    for name, graph in manifest["graphs"].items():
        proto = onnx.load(str(out / graph["file"]), load_external_data=False)
        listed = {w["name"]: w for w in graph["weights"]}
        for t in proto.graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                info = {e.key: e.value for e in t.external_data}
                refs.setdefault((int(info["offset"]), int(info["length"])), set()).add(name)
                w = listed.pop(t.name)
                assert (w["offset"], w["shape"]) == (int(info["offset"]), list(t.dims)) and w["offset"] % 64 == 0
        assert not listed  # the manifest names no weight the graph does not read from the file
        assert (out / graph["file"]).stat().st_size * 3 < (out / "weights.data").stat().st_size
    assert any(graphs == {"prefill", "decode"} for graphs in refs.values())  # the layers' weights
    assert any(graphs == {"embed", "decode"} for graphs in refs.values())  # the embedding table
    assert (out / "weights.data").stat().st_size < sum(length for _, length in refs) * 1.1  # once each, little padding
    assert max(max(e.values()) for e in manifest["verification"].values()) <= 1e-4
