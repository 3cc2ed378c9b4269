"""manifest.json: everything a runtime (Python or C++) needs to drive the exported graphs.

Written from the same specs the graphs were checked against (export/onnx_export.py), so names,
shapes and dtypes are those of the files. Paths are relative to the manifest's folder.
"""
from __future__ import annotations

from eas.adapters.attach import llama_of
from eas.errors import UsageError
from eas.model.image import IMAGENET_MEAN, IMAGENET_STD, PIXEL_DIVISOR
from eas.model.lavin import IMAGE_PREFIX, NO_IMAGE_PREFIX
from eas.model.llava import IMAGE, llava_question, vicuna_v1
from eas.model.tokenizer import Tokenizer
from export.graphs import StateLayout, n_image_tokens, wiring
from export.onnx_export import GraphSpec

# 2: the task's prompt format; the image section's divisor replaces scale. 3: decode takes K/V
# buffers of a fixed slot count and the slot to write (length), and returns them written. 4: each
# graph lists its weights in the data file (name, offset, dtype, shape), so a runtime maps them
# once for all its graphs.
FORMAT, VERSION = "eas-export", 4
TOKENIZER_FILE = "tokenizer.model"


def profiles(max_batch: int, max_seq: int) -> dict[str, list[int]]:
    """[min, opt, max] of every dynamic dim; every min is 1 (TensorRT rejects empty dims).
    opt (what TensorRT tunes for): one example, half the context."""
    half = max(1, max_seq // 2)
    return {"batch": [1, 1, max_batch], "images": [1, 1, max_batch], "seq": [1, half, max_seq],
            "slots": [1, half, max_seq]}


def sequence_section(model, tok: Tokenizer) -> dict:
    common = {"bos_id": tok.bos_id, "eos_id": tok.eos_id, "pad_id": tok.pad_id, "slot_id": 0}
    if wiring(model) == "text":
        return {"kind": "text", **common,
                "layout": "[pad.. | BOS | prompt]; positions count from 0 at BOS; key_mask = prompt_mask = "
                          "non-pad slots"}
    if wiring(model) == "llava":
        return llava_sequence(model, common)
    return {"kind": "lavin", **common,
            "layout": "[pad.. | modality | BOS | prefix | image slots (image only) | prompt]; positions count "
                      "from 0 at the modality slot (0 on pads); key_mask = non-pad slots except the modality "
                      "slot; prompt_mask = non-pad slots; tokens = slot_id at modality and image slots",
            "prefix_text": {"image": IMAGE_PREFIX, "text": NO_IMAGE_PREFIX},
            "prefix_ids": {"image": tok.encode(IMAGE_PREFIX, bos=False, eos=False),
                           "text": tok.encode(NO_IMAGE_PREFIX, bos=False, eos=False)},
            "prompt_encoding": "tokenizer.encode(prompt) without BOS/EOS, encoded on its own (not with the prefix)",
            "n_image_tokens": model.cfg.n_visual_tokens,
            "modality_ids": {"text": 0, "image": 1}}


def llava_sequence(model, common: dict) -> dict:
    """LLaVA-1.5's vicuna_v1 conversation (eas.model.llava), as templates a runtime fills."""
    fmt = model.prompt_format
    if llava_question(fmt.fill("q")) != fmt.fill("q"):
        raise UsageError(f"the LLaVA model's recorded prompt template {fmt.template!r} is LaVIN's frame (a run "
                         f"tuned before LLaVA formats existed); tune it again to export it")
    return {"kind": "llava", **common,
            "layout": "[pad.. | BOS | conversation before image_marker | image slots | conversation after it]; "
                      "without an image [pad.. | BOS | conversation]; positions count from 0 at BOS; key_mask = "
                      "prompt_mask = non-pad slots; tokens = slot_id at image slots",
            "strip": {"prefix": "Question: ", "suffix": "Response:"},
            "conversation": {"image": vicuna_v1(f"{IMAGE}\n{{prompt}}"), "text": vicuna_v1("{prompt}")},
            "image_marker": IMAGE,
            "prompt_encoding": "the prompt, with strip.prefix and strip.suffix removed and then surrounding "
                               "whitespace, replaces {prompt} in conversation.image (with an image) or .text; a "
                               "prompt holding image_marker once takes .text and places the image itself; the "
                               "text before and after image_marker is encoded on its own, without BOS/EOS",
            "n_image_tokens": n_image_tokens(model)}


def image_section(model) -> dict | None:
    if wiring(model) == "text":
        return None
    llava = wiring(model) == "llava"
    mean, std = (model.cfg.image_mean, model.cfg.image_std) if llava else (IMAGENET_MEAN, IMAGENET_STD)
    return {"size": model.cfg.vision.image_size, "layout": "NCHW, RGB",
            "pad_to_square": [int(m * 255) for m in mean] if llava else None,
            "resize": "first, with pad_to_square, the image centred on a square of its longer side filled with "
                      "that RGB colour (LLaVA's expand2square); then PIL bicubic (antialiased) to size x size, "
                      "also when already square",
            "divisor": PIXEL_DIVISOR, "mean": list(mean), "std": list(std),
            "formula": "(pixel / divisor - mean[c]) / std[c] in float32, each step rounded (a division, not a "
                       "multiply by 1/divisor)"}


def graph_sections(specs: list[GraphSpec], layout: StateLayout, max_batch: int, max_seq: int) -> dict:
    """The manifest's "state", "graphs" and "profiles": how a runtime drives the graphs."""
    return {
        "state": {"kv": {"past": layout.past(), "present": layout.present()},
                  "adapters": list(layout.adapter_names),
                  "rule": "prefill returns present K/V of its T slots and the adapter tensors; the runtime "
                          "copies the K/V into zeroed buffers of S slots (S = T + answer length - 1) and "
                          "key_mask into [B, S] (false past T); decode step n takes the buffers as past, "
                          "length = T + n (the slot it writes, made visible in key_mask before or after the "
                          "step) and the adapter tensors unchanged, and returns the buffers with slot length "
                          "written as present: bind present to past's memory to update them in place"},
        "graphs": {s.name: {"file": s.file, "data_file": s.data_file, "weights": s.weights,
                            "inputs": [t.to_json() for t in s.inputs], "outputs": [t.to_json() for t in s.outputs]}
                   for s in specs},
        "profiles": profiles(max_batch, max_seq),
    }


def build_manifest(model, specs: list[GraphSpec], layout: StateLayout, tok: Tokenizer, dtype: str,
                   max_batch: int, max_seq: int, source: str) -> dict:
    cfg = llama_of(model).cfg
    return {
        "format": FORMAT, "version": VERSION, "source": source, "dtype": dtype,
        "model": {"kind": type(model.cfg).__name__, "n_layers": cfg.n_layers, "dim": cfg.dim,
                  "vocab_size": cfg.vocab_size, "n_kv_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
                  "max_positions": 2 * cfg.max_seq_len},
        "merge": {"mode": model.merge_info["mode"], "unit": model.merge_info["unit"],
                  "no_attention": list(cfg.no_attention), "no_ffn": list(cfg.no_ffn),
                  "kv_layers": list(layout.kv_layers)},
        **graph_sections(specs, layout, max_batch, max_seq),
        "engines": {},
        "tokenizer": {"file": TOKENIZER_FILE, "kind": "sentencepiece", "vocab_size": tok.vocab_size,
                      "bos_id": tok.bos_id, "eos_id": tok.eos_id, "pad_id": tok.pad_id},
        "prompt": {"format": model.prompt_format.to_json(),
                   "rule": "the prompt is format.template with {question} replaced by the user's question, or by "
                           "format.question when none is given (an error when that is null); raw text is sent as "
                           "typed only on request; format.max_new_tokens is the default answer budget"},
        "sequence": sequence_section(model, tok),
        "image": image_section(model),
        "generation": "greedy: argmax of logits; an example stops at eos_id (not emitted); finished examples "
                      "keep decoding so the batch stays in lock-step; position = last prompt position + 1 + step",
    }
