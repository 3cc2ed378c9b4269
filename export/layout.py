"""The prompt layout, rebuilt from manifest.json alone (what a C++ runtime does; numpy only).

A test checks it against eas.model.lavin.build_batch / eas.model.tokenizer.left_pad, so the manifest's
"sequence" section is provably all a runtime needs. Rows are left-padded:

    LaVIN      [pad.. | modality | BOS | prefix ids | image slots (with an image) | prompt ids]
    text-only  [pad.. | BOS | prompt ids]
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def build_layout(sequence: dict, prompts: Sequence[Sequence[int]], has_image: Sequence[bool]) -> dict[str, np.ndarray]:
    """Encoded prompts (no BOS/EOS) -> the embed/prefill inputs, each [B, T] except has_image [B].

    image_slots marks where the vision graph's image tokens are copied, in row order."""
    lavin = sequence["kind"] == "lavin"
    rows = []
    for ids, image in zip(prompts, has_image):
        if image and not lavin:
            raise ValueError("a text-only model takes no image")
        if lavin:
            prefix = sequence["prefix_ids"]["image" if image else "text"]
            n_img = sequence["n_image_tokens"] if image else 0
            head = [sequence["slot_id"], sequence["bos_id"], *prefix]
            rows.append((head + [sequence["slot_id"]] * n_img + list(ids), len(head), n_img))
        else:
            rows.append(([sequence["bos_id"], *ids], 0, 0))
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
