"""export/symbolics.py: reshapes of trailing dims as one constant Reshape, grouped-query attention
without repeating K/V; ONNX Runtime at other batch and sequence sizes than the traced ones
against PyTorch, and the decode graph appends K/V instead of scattering into a padded copy."""
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from eas.model.config import LlamaConfig
from export.onnx_export import OPSET
from export.symbolics import export_symbolics
from export_fixtures import exported


class Heads(nn.Module):
    """[B, T, H*D] -> grouped-query self-attention over heads -> [B, T, H*D], with reshapes of the
    last dims only (what the decoder does)."""

    def forward(self, x, mask):
        q = x.unflatten(-1, (4, 8)).transpose(1, 2)  # H = 4 heads of D = 8
        kv = x[..., :16].unflatten(-1, (2, -1)).transpose(1, 2)  # 2 K/V heads
        out = F.scaled_dot_product_attention(q, kv, kv * 2, attn_mask=mask, enable_gqa=True)
        return out.transpose(1, 2).flatten(-2)


def test_reshapes_and_grouped_attention_match_pytorch_at_untraced_sizes(tmp_path):
    gen = torch.Generator().manual_seed(0)
    x, mask = torch.randn(2, 5, 32, generator=gen), torch.rand(2, 1, 5, 5, generator=gen) < 0.7
    mask[..., torch.arange(5), torch.arange(5)] = True
    path = tmp_path / "heads.onnx"
    with warnings.catch_warnings(), export_symbolics(OPSET):
        warnings.simplefilter("ignore")
        torch.onnx.export(Heads(), (x, mask), str(path), input_names=["x", "mask"], output_names=["y"],
                          dynamic_axes={"x": {0: "b", 1: "t"}, "mask": {0: "b", 2: "t", 3: "t"}, "y": {0: "b", 1: "t"}},
                          opset_version=OPSET, dynamo=False)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "Shape" not in ops and ops.count("Reshape") == 5, ops  # 3 unflatten/flatten + 2 for the groups
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b, t in ((1, 1), (3, 7)):
        x, mask = torch.randn(b, t, 32, generator=gen), torch.rand(b, 1, t, t, generator=gen) < 0.6
        mask[..., torch.arange(t), torch.arange(t)] = True
        want = Heads()(x, mask)
        # the reference repeats each K/V head for its group explicitly
        kv = x[..., :16].unflatten(-1, (2, 8)).transpose(1, 2).repeat_interleave(2, 1)
        naive = torch.softmax((x.unflatten(-1, (4, 8)).transpose(1, 2) @ kv.transpose(-1, -2) / 8 ** 0.5)
                              .masked_fill(~mask, -torch.inf), -1) @ (kv * 2)
        assert torch.allclose(want, naive.transpose(1, 2).flatten(-2), atol=1e-6)
        got = session.run(None, {"x": x.numpy(), "mask": mask.numpy()})[0]
        assert got.shape == (b, t, 32) and np.abs(got - want.numpy()).max() < 1e-5


def test_decode_graph_writes_each_kv_by_one_scatter_of_its_past():
    """present.X = ScatterElements(past.X, index, new): nothing else reads past.X (no copy, pad or
    concatenation), so a runtime binding present.X to past.X's memory updates the cache in place;
    one index serves every layer."""
    graph = onnx.load(str(exported("text", "static") / "decode.onnx")).graph
    kv = [i.name[5:] for i in graph.input if i.name.startswith("past.")]
    assert len(kv) == 2 * 2  # the 2 kept layers
    for name in kv:
        readers = [n for n in graph.node if f"past.{name}" in n.input]
        assert [(n.op_type, list(n.output)) for n in readers] == [("ScatterElements", [f"present.{name}"])]
        assert readers[0].input[0] == f"past.{name}" and readers[0].attribute[0].i == 2  # axis: slots
    scatters = [n for n in graph.node if n.op_type == "ScatterElements"]
    assert len(scatters) == len(kv) + 1  # and key_mask's slot
    assert len({n.input[1] for n in scatters if n.input[0] != "key_mask"}) == 1
    # head-major K/V: the only transposes are K^T in Q·K^T (ONNX Runtime folds them into the
    # MatMul); the step's single token moves past the heads by Reshape (export/symbolics.py)
    perms = [list(n.attribute[0].ints) for n in graph.node if n.op_type == "Transpose"]
    assert perms == [[0, 1, 3, 2]] * 2, perms  # one per kept layer


def test_static_merged_decode_graph_is_the_floor_plus_one_add_per_layer(tmp_path):
    """Merged adapters cost one Add per layer in the exported decode step, the shift after the norm:
    a constant in a kept layer, the per-example one (computed at prefill) in a skipped layer.
    Everything else is the graph of the same layers deleted, no adapters."""
    from collections import Counter

    from eas.bench.variants import base_model, variants
    from export.onnx_export import export_graph, graph_specs

    cfg = LlamaConfig(dim=64, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=300, hidden_dim=128, max_seq_len=64)
    ops = {}
    for kind, model in variants(base_model(cfg), 2, kinds=("static", "floor")).items():
        spec = next(s for s in graph_specs(model)[0] if s.name == "decode")
        export_graph(spec, tmp_path / f"{kind}.onnx", cfg.vocab_size)
        ops[kind] = Counter(n.op_type for n in onnx.load(str(tmp_path / f"{kind}.onnx")).graph.node)
    assert ops["static"] - ops["floor"] == Counter({"Add": cfg.n_layers}) and not ops["floor"] - ops["static"], ops
