"""How scaled_dot_product_attention is written into the ONNX graphs: softmax always in fp32.

torch.onnx's own translation builds the boolean mask from fp32 constants, which silently turns
an fp16 attention (and the rest of the network after it) into fp32. Here the precision plan is
explicit, which is what a strongly typed TensorRT network follows: q is pre-scaled by 1/sqrt(D)
and Q·K^T runs in the input dtype, the scores are cast to fp32, masked and softmaxed, and the
probabilities are cast back for the product with V. Every query of our models sees at least
itself (eas.model.llama.attention_mask; the ViT has no mask), so no softmax row is all -inf.
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch.onnx import symbolic_helper

FLOAT = 1  # onnx.TensorProto.FLOAT
NAME = "aten::scaled_dot_product_attention"


def _cast(g, x, to: int, dtype: int):
    return x if to == dtype else g.op("Cast", x, to_i=to)


def scaled_dot_product_attention(g, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                 scale=None, enable_gqa=False):
    if not symbolic_helper._is_none(scale) or symbolic_helper._maybe_get_const(is_causal, "b"):
        raise ValueError("this ONNX translation of scaled_dot_product_attention takes no scale and no is_causal "
                         "(the models pass a boolean mask instead); a model calling it otherwise cannot export")
    dtype = query.type().scalarType()
    onnx_dtype = {"Float": FLOAT, "Half": 10, "BFloat16": 16}[dtype]
    # 1/sqrt(D) from the graph's own shape (the tracer does not know D), computed in fp32
    head_dim = g.op("Cast", g.op("Shape", query, start_i=-1), to_i=FLOAT)
    q = g.op("Mul", query, _cast(g, g.op("Reciprocal", g.op("Sqrt", head_dim)), onnx_dtype, FLOAT))
    scores = _cast(g, g.op("MatMul", q, g.op("Transpose", key, perm_i=[0, 1, 3, 2])), FLOAT, onnx_dtype)
    if not symbolic_helper._is_none(attn_mask):
        scores = g.op("Where", attn_mask, scores, g.op("Constant", value_t=torch.tensor(-math.inf)))
    probs = _cast(g, g.op("Softmax", scores, axis_i=-1), onnx_dtype, FLOAT)
    return g.op("MatMul", probs, value)


@contextlib.contextmanager
def fp32_softmax_attention(opset: int):
    """Use this translation for the exports inside the block (the registry is global)."""
    torch.onnx.register_custom_op_symbolic(NAME, scaled_dot_product_attention, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic(NAME, opset)
