"""LaVIN wiring (eas_method.md §5): CLIP CLS taps -> AdapterMLP -> image tokens inside a LLaMA prompt.

Sequence layout of one example (§5.3), left-padded in a batch so that examples decode in lock-step:

    [pad.. | modality | BOS | "Image: " | img_1..img_k | prompt | answer EOS]      (image)
    [pad.. | modality | BOS | "Image: N/A" | prompt | answer EOS]                   (text only)

The modality slot holds a learned embedding (index 1 with an image, 0 without). No other token
attends to it; it only attends to itself. RoPE positions count the valid slots from 0 at the
modality slot, in training and at inference alike: we drop LaVIN's one-position shift at decode
(its cache forgets the modality slot, so generated tokens run one position behind training).

Prompt and answer are tokenised separately (LaVIN tokenises their concatenation), so the prompt
tokens seen in training are exactly those seen at inference.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from eas.model.config import LavinConfig
from eas.model.generate import generate
from eas.model.llama import Llama
from eas.model.state import State
from eas.model.tokenizer import Tokenizer
from eas.model.vit import VisionTransformer

IGNORE_INDEX = -100
IMAGE_PREFIX, NO_IMAGE_PREFIX = "Image: ", "Image: N/A"


class AdapterMLP(nn.Module):
    """Visual projector: Linear -> SiLU -> Linear (LaVIN's ``conv_A``/``conv_B`` names, so its weights load)."""

    def __init__(self, in_features: int, hidden: int, out_features: int):
        super().__init__()
        self.conv_A = nn.Linear(in_features, hidden)
        self.conv_B = nn.Linear(hidden, out_features)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        for linear in (self.conv_A, self.conv_B):
            nn.init.xavier_uniform_(linear.weight, generator=generator)
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The projector is trained in fp32 while the ViT may run in fp16.
        return self.conv_B(F.silu(self.conv_A(x.to(self.conv_A.weight.dtype))))


@dataclass
class LavinBatch:
    """A left-padded batch; every tensor is [B, T] except has_image [B]."""
    tokens: torch.Tensor         # long; 0 in pad, modality and image slots
    positions: torch.Tensor      # long; RoPE position, 0 at the modality slot (0 on pads, unused)
    key_mask: torch.Tensor       # bool; keys later queries may see: valid slots except the modality slot
    prompt_mask: torch.Tensor    # bool; modality, BOS, prefix, image and prompt slots (adapters pool here)
    modality_slot: torch.Tensor  # bool
    image_slots: torch.Tensor    # bool
    # long; the target of the logits AT THE SAME position, i.e. the next token (already shifted):
    # the last prompt slot carries the first answer token, the last answer token carries EOS, and
    # everything unsupervised is IGNORE_INDEX. So loss = cross_entropy(logits, labels) unshifted.
    labels: torch.Tensor
    has_image: torch.Tensor      # bool [B]

    def to(self, device) -> "LavinBatch":
        return LavinBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def build_batch(tokenizer: Tokenizer, examples: Sequence[tuple[str, str | None, bool]],
                n_image_tokens: int, max_len: int | None = None) -> LavinBatch:
    """(prompt, answer or None, has_image) per example -> LavinBatch. Answers get EOS and labels."""
    if not examples:
        raise ValueError("build_batch needs at least one example")
    rows = []
    for i, (prompt, answer, has_image) in enumerate(examples):
        prefix = tokenizer.encode(IMAGE_PREFIX if has_image else NO_IMAGE_PREFIX, bos=False, eos=False)
        n_img = n_image_tokens if has_image else 0
        head = [0, tokenizer.bos_id] + prefix + [0] * n_img
        prompt_ids = head + tokenizer.encode(prompt, bos=False, eos=False)
        answer_ids = [] if answer is None else tokenizer.encode(answer, bos=False, eos=True)
        if max_len is not None and len(prompt_ids) + len(answer_ids) > max_len:
            raise ValueError(f"example {i} needs {len(prompt_ids) + len(answer_ids)} slots, more than "
                             f"max_len={max_len}")
        rows.append((prompt_ids, answer_ids, 2 + len(prefix), n_img))

    B, T = len(rows), max(len(p) + len(a) for p, a, _, _ in rows)
    tokens = torch.zeros(B, T, dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    valid, prompt_mask, modality_slot, image_slots = (torch.zeros(B, T, dtype=torch.bool) for _ in range(4))
    for b, (prompt_ids, answer_ids, image_start, n_img) in enumerate(rows):
        start, n_prompt = T - len(prompt_ids) - len(answer_ids), len(prompt_ids)
        tokens[b, start:] = torch.tensor(prompt_ids + answer_ids)
        valid[b, start:] = True
        modality_slot[b, start] = True
        image_slots[b, start + image_start: start + image_start + n_img] = True
        prompt_mask[b, start: start + n_prompt] = True
        if answer_ids:
            labels[b, start + n_prompt - 1: T - 1] = torch.tensor(answer_ids)
    return LavinBatch(tokens=tokens, positions=(valid.cumsum(1) - 1).clamp(min=0),
                      key_mask=valid & ~modality_slot, prompt_mask=prompt_mask, modality_slot=modality_slot,
                      image_slots=image_slots, labels=labels,
                      has_image=torch.tensor([bool(e[2]) for e in examples]))


def place_images(h: torch.Tensor, batch: LavinBatch, pixels: torch.Tensor | None, image_tokens) -> torch.Tensor:
    """Text embeddings h [B, T, C] with image_tokens(pixels of the image examples) in the image slots."""
    if pixels is None:
        if batch.has_image.any():
            raise ValueError("the batch has image examples but no pixels were given")
        return h
    if pixels.shape[0] != batch.tokens.shape[0]:
        raise ValueError(f"pixels hold {pixels.shape[0]} images for a batch of {batch.tokens.shape[0]}")
    if not batch.has_image.any():
        return h
    images = image_tokens(pixels[batch.has_image]).to(h.dtype)
    # Image slots are contiguous and in batch order, so row-major scatter places each image's
    # tokens into its own example.
    return h.masked_scatter(batch.image_slots[..., None], images)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy over supervised slots (labels are already shifted), averaged or summed."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX,
                           reduction=reduction)


class Lavin(nn.Module):
    PROJECTOR = "adapter_proj"  # the visual projector's attribute (its own learning rate: --projector-lr)

    def __init__(self, cfg: LavinConfig):
        super().__init__()
        self.cfg = cfg
        self.llama = Llama(cfg.llama)
        self.visual = VisionTransformer(cfg.vision)
        self.adapter_proj = AdapterMLP(cfg.vision.width, cfg.projector_hidden, cfg.llama.dim)
        self.adapter_modality_embedding = nn.Embedding(2, cfg.llama.dim)

    def init_weights(self, generator: torch.Generator | None = None) -> "Lavin":
        self.llama.init_weights(generator)
        self.visual.init_weights(generator)
        self.adapter_proj.reset_parameters(generator)
        nn.init.normal_(self.adapter_modality_embedding.weight, generator=generator)
        return self

    def build_batch(self, tokenizer: Tokenizer, examples: Sequence[tuple[str, str | None, bool]]) -> LavinBatch:
        if tokenizer.vocab_size > self.cfg.llama.vocab_size:
            raise ValueError(f"tokenizer {tokenizer.path} has {tokenizer.vocab_size} pieces, the model only "
                             f"{self.cfg.llama.vocab_size} embeddings")
        return build_batch(tokenizer, examples, self.cfg.n_visual_tokens, self.cfg.llama.max_seq_len)

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """[N, 3, S, S] -> [N, n_visual_tokens, llama.dim]."""
        return self.adapter_proj(self.visual(pixels, self.cfg.tap_blocks))

    def embed_text(self, tokens: torch.Tensor, modality_slot: torch.Tensor, has_image: torch.Tensor) -> torch.Tensor:
        """Embeddings [B, T, C] of everything but the image slots: token embeddings, and the
        modality embedding at the modality slot. Its own method so that it exports as a graph
        (the image tokens come from the vision graph and are copied into their slots)."""
        h = self.llama.tok_embeddings(tokens)
        modality = self.adapter_modality_embedding(has_image.long()).to(h.dtype)
        return torch.where(modality_slot[..., None], modality[:, None], h)

    def embed(self, batch: LavinBatch, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """Input embeddings [B, T, C]: modality embedding, token embeddings and image tokens.

        pixels: [B, 3, S, S] or None when no example has an image. Rows of text-only examples are
        ignored and never run through the ViT.
        """
        return place_images(self.embed_text(batch.tokens, batch.modality_slot, batch.has_image), batch, pixels,
                            self.image_tokens)

    def forward(self, batch: LavinBatch, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """Training/scoring path without a cache: logits [B, T, V]."""
        h = self.llama.hidden(self.embed(batch, pixels), batch.positions, batch.key_mask,
                              prompt_mask=batch.prompt_mask)
        return self.llama.output(h)

    def prefill(self, batch: LavinBatch, pixels: torch.Tensor | None, state: State) -> tuple[torch.Tensor, State]:
        """Prompt batch and an empty state (llama.new_state) -> (last-position logits [B, V], state)."""
        return self.llama.prefill(self.embed(batch, pixels), batch.positions, batch.key_mask, state,
                                  batch.prompt_mask)

    @torch.no_grad()
    def generate(self, batch: LavinBatch, pixels: torch.Tensor | None, max_new_tokens: int, *, eos_id: int,
                 **sampling) -> list[list[int]]:
        """New tokens per example (without EOS); see eas.generate.generate for ``sampling``."""
        return generate(self.llama, self.embed(batch, pixels), batch.positions, batch.key_mask, max_new_tokens,
                        eos_id=eos_id, prompt_mask=batch.prompt_mask, **sampling)
