"""The prompt layout, rebuilt from manifest.json alone (what a C++ runtime does; numpy only).

A test checks it against the models' own batch builders (eas.model.lavin.build_batch,
eas.model.llava.build_llava_batch, eas.model.tokenizer.left_pad), so the manifest's "sequence"
section is provably all a runtime needs. Rows are left-padded:

    LaVIN      [pad.. | modality | BOS | prefix ids | image slots (with an image) | prompt ids]
    LLaVA      [pad.. | BOS | conversation before <image> | image slots | conversation after it]
               (without an image: [pad.. | BOS | the whole conversation])
    text-only  [pad.. | BOS | prompt ids]

Decode then runs on buffers of prompt + answer slots (decode_buffers, the manifest's state rule).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Pieces = tuple[list[int], list[int]]  # token ids before the image slots, ids after them


def prompt_pieces(sequence: dict, encode: Callable[[str], list[int]], prompt: str, image: bool) -> Pieces:
    """One prompt's ids around its image slots; encode(text) gives ids without BOS/EOS, and each
    piece of text is encoded on its own."""
    kind = sequence["kind"]
    if image and kind == "text":
        raise ValueError("a text-only model takes no image")
    if kind == "lavin":
        return list(sequence["prefix_ids"]["image" if image else "text"]), encode(prompt)
    if kind == "text":
        return [], encode(prompt)
    strip = sequence["strip"]
    question = prompt.removeprefix(strip["prefix"]).removesuffix(strip["suffix"]).strip()
    marker = sequence["image_marker"]
    if question.count(marker) > (1 if image else 0):
        raise ValueError(f"a prompt may hold {marker} once, and only with an image: {question!r}")
    inline = marker in question  # the user placed the image: the question is the whole message
    template = sequence["conversation"]["image" if image and not inline else "text"]
    before, _, after = template.replace("{prompt}", question).partition(marker)
    return encode(before), encode(after) if image else []


def prompts_layout(sequence: dict, encode: Callable[[str], list[int]], prompts: Sequence[str],
                   has_image: Sequence[bool]) -> dict[str, np.ndarray]:
    """Prompt texts -> build_layout of their prompt_pieces (encode: text -> ids without BOS/EOS)."""
    return build_layout(sequence, [prompt_pieces(sequence, encode, p, i) for p, i in zip(prompts, has_image)],
                        has_image)


def build_layout(sequence: dict, pieces: Sequence[Pieces], has_image: Sequence[bool]) -> dict[str, np.ndarray]:
    """prompt_pieces of each example -> the embed/prefill inputs, each [B, T] except has_image [B].

    image_slots marks where the vision graph's image tokens are copied, in row order."""
    lavin = sequence["kind"] == "lavin"
    rows = []
    for (before, after), image in zip(pieces, has_image):
        if image and sequence["kind"] == "text":
            raise ValueError("a text-only model takes no image")
        n_img = sequence["n_image_tokens"] if image else 0
        head = ([sequence["slot_id"]] if lavin else []) + [sequence["bos_id"], *before]
        rows.append((head + [sequence["slot_id"]] * n_img + list(after), len(head), n_img))
    B, T = len(rows), max(len(r[0]) for r in rows)
    out = {k: np.zeros((B, T), dtype=bool) for k in ("valid", "modality_slot", "image_slots")}
    tokens = np.full((B, T), sequence["pad_id"], dtype=np.int64)
    for b, (ids, image_start, n_img) in enumerate(rows):
        start = T - len(ids)
        tokens[b, start:] = ids
        out["valid"][b, start:] = True
        out["modality_slot"][b, start] = lavin
        out["image_slots"][b, start + image_start: start + image_start + n_img] = True
    valid = out.pop("valid")
    return {"tokens": tokens, "positions": np.maximum(valid.cumsum(1) - 1, 0).astype(np.int64),
            "key_mask": valid & ~out["modality_slot"], "prompt_mask": valid, **out,
            "has_image": np.asarray(has_image, dtype=bool)}


def decode_buffers(kv: Sequence[np.ndarray], key_mask: np.ndarray, slots: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The prefill -> decode hand-over: prefill's K/V [B, H, T, D] in the first T slots of zeroed
    buffers of `slots` (zeros, not garbage: masked slots are still read), and key_mask [B, T] in
    [B, slots], false past T."""
    T = key_mask.shape[1]
    buffers = [np.zeros((*x.shape[:2], slots, x.shape[3]), x.dtype) for x in kv]
    for buf, x in zip(buffers, kv):
        buf[:, :, :T] = x
    mask = np.zeros((key_mask.shape[0], slots), dtype=bool)
    mask[:, :T] = key_mask
    return buffers, mask
