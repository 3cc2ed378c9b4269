"""How some torch ops are written into the ONNX graphs (the TorchScript exporter's registry).

Attention: torch.onnx's own translation of scaled_dot_product_attention builds the boolean mask
from fp32 constants, which silently turns an fp16 attention (and the rest of the network after
it) into fp32. Here the precision plan is explicit, which is what a strongly typed TensorRT
network follows: q is pre-scaled by 1/sqrt(D) and Q·K^T runs in the input dtype, the scores are
cast to fp32, masked and softmaxed, and the probabilities are cast back for the product with V.
Every query of our models sees at least itself (eas.model.llama.attention_mask; the ViT has no
mask), so no softmax row is all -inf. Grouped-query attention (enable_gqa) folds each K/V head's
group of query heads into its query rows, so K/V are never repeated.

Reshapes: torch.onnx writes unflatten / flatten as Shape, Slice and Concat nodes that compute the
target shape at run time, because the leading dims (batch, sequence) are dynamic. When only the
trailing dims change, ONNX's Reshape says the same with one constant shape (0 = keep that dim):
four fewer nodes per reshape, and a decode step has several per layer. A transpose that moves
only dims of size 1 (the decode step's single token past the heads) is a Reshape too, and a
Reshape of a Reshape is written as one.

A static merge's shifted norm (torch.addcmul) is one Mul and one Add, as the floor's norm plus
its shift.

Sizes the translations read from the traced tensors (head_dim, K/V heads, the decode step's
T = 1) are static in the trace; dims the exporter marks dynamic read as unknown and stay 0 or -1.
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch.onnx import symbolic_helper, symbolic_opset9, symbolic_opset11, symbolic_opset13

FLOAT = 1  # onnx.TensorProto.FLOAT
TORCH_DTYPES = {FLOAT: torch.float32, 10: torch.float16, 16: torch.bfloat16}


def _cast(g, x, to: int, dtype: int):
    return x if to == dtype else g.op("Cast", x, to_i=to)


def _const(g, values):
    return g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))


def scaled_dot_product_attention(g, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                 scale=None, enable_gqa=False):
    if not symbolic_helper._is_none(scale) or symbolic_helper._maybe_get_const(is_causal, "b"):
        raise ValueError("this ONNX translation of scaled_dot_product_attention takes no scale and no is_causal "
                         "(the models pass a boolean mask instead); a model calling it otherwise cannot export")
    dtype = query.type().scalarType()
    onnx_dtype = {"Float": FLOAT, "Half": 10, "BFloat16": 16}[dtype]
    q_sizes, k_sizes = symbolic_helper._get_tensor_sizes(query), symbolic_helper._get_tensor_sizes(key)
    head_dim = q_sizes[-1] if q_sizes else None
    if head_dim is None:  # 1/sqrt(D) from the graph's own shape, computed in fp32
        d = g.op("Cast", g.op("Shape", query, start_i=-1), to_i=FLOAT)
        scale_t = _cast(g, g.op("Reciprocal", g.op("Sqrt", d)), onnx_dtype, FLOAT)
    else:
        scale_t = g.op("Constant", value_t=torch.tensor(1 / math.sqrt(head_dim), dtype=TORCH_DTYPES[onnx_dtype]))
    gqa = symbolic_helper._maybe_get_const(enable_gqa, "b")
    q = query
    if gqa:  # [B, H, T, D] -> [B, KV, rep*T, D]: query head h reads K/V head h // rep
        q = _heads_reshape(g, q, _dim(g, key, k_sizes, 1), _dim(g, query, q_sizes, 3))
    q = g.op("Mul", q, scale_t)  # beside the MatMul, where ONNX Runtime folds it in
    scores = _cast(g, g.op("MatMul", q, g.op("Transpose", key, perm_i=[0, 1, 3, 2])), FLOAT, onnx_dtype)
    if not symbolic_helper._is_none(attn_mask):
        mask = attn_mask
        if gqa:  # each query row's mask row, repeated for the rep heads of its group
            rep = g.op("Div", _dim(g, query, q_sizes, 1), _dim(g, key, k_sizes, 1))
            mask = g.op("Tile", mask, g.op("Concat", _const(g, [1, 1]), rep, _const(g, [1]), axis_i=0))
        scores = g.op("Where", mask, scores, g.op("Constant", value_t=torch.tensor(-math.inf)))
    probs = _cast(g, g.op("Softmax", scores, axis_i=-1), onnx_dtype, FLOAT)
    out = g.op("MatMul", probs, value)
    if not gqa:
        return out
    return _heads_reshape(g, out, _dim(g, query, q_sizes, 1), _dim(g, query, q_sizes, 3))


def _heads_reshape(g, x, heads, head_dim):
    """x [B, ..., D] -> [B, heads, -1, D]; one constant Reshape where both sizes are constants."""
    sizes = [symbolic_helper._maybe_get_const(v, "is") for v in (heads, head_dim)]
    if all(isinstance(v, list) for v in sizes):
        return _reshape(g, x, [0, sizes[0][0], -1, sizes[1][0]])
    return g.op("Reshape", x, g.op("Concat", _const(g, [0]), heads, _const(g, [-1]), head_dim, axis_i=0))


def _dim(g, x, sizes, i: int):
    """Dim i of x as a 1-element int64 tensor: a constant where the trace knows it (head counts and
    head size are model constants), else read off x's shape."""
    if sizes and sizes[i] is not None:
        return _const(g, [sizes[i]])
    return g.op("Shape", x, start_i=i, end_i=i + 1)


def _reshape(g, x, shape: list[int]):
    """Reshape x to a constant `shape` (0 = keep that dim of x). Dims the trace knows are written
    as constants; when x is itself a constant Reshape of some y and every 0 left would keep a dim
    y has at the same place, y is reshaped directly: a chain of reshapes is one node."""
    sizes = symbolic_helper._get_tensor_sizes(x) or []
    shape = [sizes[i] if s == 0 and i < len(sizes) and sizes[i] is not None else s for i, s in enumerate(shape)]
    if 0 in shape and -1 not in shape:  # torch's shape inference wants a -1 beside 0s
        shape[next(i for i, s in enumerate(shape) if s != 0)] = -1
    node = x.node()
    if node.kind() == "onnx::Reshape":
        y, first = node.inputs()
        first = symbolic_helper._maybe_get_const(first, "is")
        if isinstance(first, list) and all(i < len(first) and first[i] == 0 for i, s in enumerate(shape) if s == 0):
            x = y
    return g.op("Reshape", x, _const(g, shape))


def unflatten(g, input, dim, unflattened_size):
    rank, d = symbolic_helper._get_tensor_rank(input), symbolic_helper._get_const(dim, "i", "dim")
    sizes = symbolic_helper._maybe_get_const(unflattened_size, "is")
    if rank is None or d not in (-1, rank - 1) or not isinstance(sizes, list):
        return symbolic_opset13.unflatten(g, input, dim, unflattened_size)
    return _reshape(g, input, [0] * (rank - 1) + sizes)


def flatten(g, input, start_dim, end_dim):
    rank = symbolic_helper._get_tensor_rank(input)
    start, end = symbolic_helper._get_const(start_dim, "i", "start_dim"), symbolic_helper._get_const(end_dim, "i", "end_dim")
    if rank is None or end not in (-1, rank - 1):
        return symbolic_opset11.flatten(g, input, start_dim, end_dim)
    start = start % rank
    return _reshape(g, input, [0] * start + [-1])


def transpose(g, input, dim0, dim1):
    """A swap that moves only dims of size 1 (a decode step's single token past the heads) keeps
    the data's order: a Reshape, which joins the reshapes around it, instead of a Transpose."""
    sizes = symbolic_helper._get_tensor_sizes(input)
    if sizes is None:
        return symbolic_opset9.transpose(g, input, dim0, dim1)
    rank = len(sizes)
    a, b = symbolic_helper._get_const(dim0, "i", "dim0") % rank, symbolic_helper._get_const(dim1, "i", "dim1") % rank
    perm = list(range(rank))
    perm[a], perm[b] = perm[b], perm[a]
    kept = [i for i in perm if sizes[i] != 1]
    if kept != sorted(kept) or any(sizes[i] is None and i != p for p, i in enumerate(perm)):
        return symbolic_opset9.transpose(g, input, dim0, dim1)
    return _reshape(g, input, [0 if sizes[i] is None else sizes[i] for i in perm])


def addcmul(g, input, tensor1, tensor2, value=1.0):
    """input + tensor1 * tensor2 (a static merge's shifted norm): Mul and Add, in the tensors'
    dtype. torch.onnx's own translation also multiplies by `value` as an fp32 constant."""
    if symbolic_helper._maybe_get_const(value, "f") != 1:
        raise ValueError("this ONNX translation of addcmul takes value=1 only")
    return g.op("Add", input, g.op("Mul", tensor1, tensor2))


SYMBOLICS = {"aten::scaled_dot_product_attention": scaled_dot_product_attention, "aten::unflatten": unflatten,
             "aten::flatten": flatten, "aten::transpose": transpose, "aten::addcmul": addcmul}


@contextlib.contextmanager
def export_symbolics(opset: int):
    """Use these translations for the exports inside the block (the registry is global)."""
    for name, fn in SYMBOLICS.items():
        torch.onnx.register_custom_op_symbolic(name, fn, opset)
    try:
        yield
    finally:
        for name in SYMBOLICS:
            torch.onnx.unregister_custom_op_symbolic(name, opset)
