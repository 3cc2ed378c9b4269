"""llama.cpp as the reference runtime: our base model's weights written to GGUF, run by llama_cpp.

Optional benchmark dependency (`pip install llama-cpp-python gguf`; llama-cpp-python builds from
source in minutes). Only a plain LLaMA maps onto llama.cpp's "llama" architecture: a model with
deleted attentions (floor, merged) or q/k/v biases is refused. Our RoPE is Meta's interleaved
convention, llama.cpp's "llama" one too, so q/k weights go in unpermuted. The vocabulary written
is synthetic (ids are fed directly; no text is tokenized), and before any timing the logits of a
prompt are checked against our own PyTorch forward.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from eas.errors import UsageError

NAMES = {"attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v", "attention.wo": "attn_output",
         "feed_forward.w1": "ffn_gate", "feed_forward.w2": "ffn_down", "feed_forward.w3": "ffn_up",
         "attention_norm": "attn_norm", "ffn_norm": "ffn_norm"}
# Worst |logit difference| / max |logit| accepted before timing, per weight type.
TOLERANCE = {"f32": 1e-3, "f16": 3e-2}
CHECK_TOKENS = 16  # prompt length of that check


def missing() -> str | None:
    """Why llama.cpp cannot run here, or None."""
    try:
        import gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError as e:
        return f"llama.cpp reference skipped: {e.name} is not installed (pip install llama-cpp-python gguf)"
    return None


def gguf_name(key: str) -> str:
    """Our state-dict key -> llama.cpp's tensor name."""
    top = {"tok_embeddings.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
           "output.weight": "output.weight"}
    if key in top:
        return top[key]
    _, layer, rest = key.split(".", 2)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{NAMES[module]}.{kind}"


def write_gguf(model, path: Path, dtype: str) -> None:
    """Write a plain LLaMA (base) as a GGUF file; matrices in `dtype` (f32/f16), norms in f32."""
    import gguf
    cfg = model.cfg
    if cfg.no_attention or cfg.no_ffn or cfg.qkv_bias or cfg.rope_scaling:
        raise UsageError("llama.cpp runs the plain base model only (no deleted units, biases or RoPE scaling)")
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(2 * cfg.max_seq_len)
    w.add_embedding_length(cfg.dim)
    w.add_block_count(cfg.n_layers)
    w.add_feed_forward_length(cfg.hidden_dim)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    _add_vocab(w, cfg.vocab_size)
    for key, t in model.state_dict().items():
        a = t.detach().float().cpu().numpy()
        w.add_tensor(gguf_name(key), a.astype(np.float16) if dtype == "f16" and a.ndim == 2 else a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _add_vocab(w, vocab: int) -> None:
    """A SYNTHETIC SentencePiece-style vocabulary: <unk> <s> </s>, byte pieces, then placeholders."""
    import gguf
    tokens, types = ["<unk>", "<s>", "</s>"], [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    for i in range(3, vocab):
        byte = i - 3
        tokens.append(f"<0x{byte:02X}>" if byte < 256 else f"▁t{i}")
        types.append(gguf.TokenType.BYTE if byte < 256 else gguf.TokenType.NORMAL)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens[:vocab])
    w.add_token_scores([0.0] * vocab)
    w.add_token_types(types[:vocab])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)


class LlamaCpp:
    """A base model in llama.cpp, K/V cache in the weights' precision; logits checked against ours."""

    def __init__(self, model, slots: int, threads: int, dtype: str = "f32", batch_tokens: int = 2048):
        import llama_cpp
        reason = missing()
        if reason:
            raise UsageError(reason)
        self.folder = Path(tempfile.mkdtemp(prefix="eas-bench-gguf-"))
        try:
            path = self.folder / f"model-{dtype}.gguf"
            write_gguf(model, path, dtype)
            self.weights = path.stat().st_size
            cache = llama_cpp.GGML_TYPE_F32 if dtype == "f32" else llama_cpp.GGML_TYPE_F16
            self.llm = llama_cpp.Llama(str(path), n_ctx=max(slots, CHECK_TOKENS), n_threads=threads, n_threads_batch=threads,
                                       n_batch=batch_tokens, n_ubatch=batch_tokens, type_k=cache, type_v=cache,
                                       verbose=False)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)  # mapped: the data stays until the model goes
        self.vocab = model.cfg.vocab_size
        self.error = self.check(model, dtype)
        self.kv_elem = 4 if dtype == "f32" else 2

    def last_logits(self) -> np.ndarray:
        """The logits of the last token evaluated (only it has logits: the prompt's others are not computed)."""
        return np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.vocab,))

    def logits(self, tokens: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(tokens)
        return self.last_logits().copy()

    @torch.no_grad()
    def check(self, model, dtype: str) -> float:
        """Relative worst logit difference against our forward on a CHECK_TOKENS prompt; refuses a mismatch."""
        gen = torch.Generator().manual_seed(3)
        ids = torch.randint(3, model.cfg.vocab_size, (1, CHECK_TOKENS), generator=gen)
        ours = model(ids.to(model.tok_embeddings.weight.device))[0, -1].float().cpu().numpy()
        theirs = self.logits(ids[0].tolist())
        err = float(np.abs(ours - theirs).max() / np.abs(ours).max())
        if not err <= TOLERANCE[dtype]:
            raise RuntimeError(f"llama.cpp ({dtype}) logits differ from ours by {err:.2e} of the largest logit "
                               f"(tolerance {TOLERANCE[dtype]}): the GGUF conversion is wrong")
        return err

    def prefill(self, tokens: np.ndarray, slots: int) -> np.ndarray:
        """`slots` is llama.cpp's own business: it allocates the context given at construction."""
        if tokens.shape[0] != 1:
            raise UsageError("the llama.cpp reference runs batch 1 only")
        self.n_prompt = tokens.shape[1]
        return np.array([int(self.logits(tokens[0].tolist()).argmax())])

    def decode(self, token: np.ndarray, steps: int) -> np.ndarray:
        tok = int(token[0])
        for _ in range(steps):
            self.llm.eval([tok])
            tok = int(np.argmax(self.last_logits()))
        return np.array([tok])

    def kv_bytes(self) -> int:
        """Bytes of the K/V actually filled (llama.cpp allocates n_ctx slots up front)."""
        cfg = self.llm.metadata
        layers, kv_heads = int(cfg["llama.block_count"]), int(cfg["llama.attention.head_count_kv"])
        head_dim = int(cfg["llama.embedding_length"]) // int(cfg["llama.attention.head_count"])
        return self.llm.n_tokens * layers * 2 * kv_heads * head_dim * self.kv_elem
