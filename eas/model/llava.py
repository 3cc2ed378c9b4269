"""LLaVA-1.5 wiring (eas_method.md §4.2): CLIP patch features -> mlp2x_gelu -> image tokens at the
<image> position of a vicuna_v1 conversation, decoded by the same LLaMA, state and generation loop
as LaVIN (eas/model/lavin.py, whose batch layout it shares without the modality slot).

One example, left-padded in a batch:

    [pad.. | BOS | "{SYSTEM} USER: " | img_1..img_N | "\\n{question} ASSISTANT:" | answer EOS]

N = grid² patch tokens (576 for ViT-L/14-336), CLS dropped. Each text piece is tokenised on its
own, as LLaVA's tokenizer_image_token does around <image>. The answer is tokenised apart from the
prompt (LLaVA tokenises the whole conversation), so training sees the prompt tokens inference
sees; SentencePiece's leading "▁" gives the space LLaVA's " ASSISTANT: {answer}" has.

The tower is called ``vision_tower`` (LLaVA's name, not LaVIN's ``visual``): EAS adapts only the
LLM here (LLaVA-EAS), and the adapter and merge code look for ``visual`` alone.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from eas.model.config import LlavaConfig
from eas.model.generate import generate
from eas.model.lavin import IGNORE_INDEX, LavinBatch, place_images
from eas.model.llama import Llama
from eas.model.state import State
from eas.model.tokenizer import Tokenizer
from eas.model.vit import VisionTransformer

IMAGE = "<image>"
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")


def vicuna_v1(question: str) -> str:
    """The vicuna_v1 prompt of a one-turn conversation, ready for the assistant's answer."""
    return f"{SYSTEM} USER: {question} ASSISTANT:"


def user_message(question: str, has_image: bool) -> str:
    """LLaVA puts the image first in the user's message, as "<image>\\n" + question."""
    if IMAGE in question:
        if not has_image or question.count(IMAGE) > 1:
            raise ValueError(f"a prompt may hold {IMAGE} once, and only with an image: {question!r}")
        return question
    return f"{IMAGE}\n{question}" if has_image else question


def llava_question(prompt: str) -> str:
    """A task prompt written LaVIN-style ("Question: {q}\\nResponse:", eas/data) as the user's
    message of a LLaVA conversation; for AID this is exactly LLaVA-EAS's question."""
    return prompt.removeprefix("Question: ").removesuffix("Response:").strip()


class Projector(nn.Module):
    """mlp2x_gelu: Linear(ViT width -> LLM width) -> GELU -> Linear; llava-hf's names."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, out_features)
        self.linear_2 = nn.Linear(out_features, out_features)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Xavier weights, zero biases (how LLaVA starts its projector before pretraining it)."""
        for linear in (self.linear_1, self.linear_2):
            nn.init.xavier_uniform_(linear.weight, generator=generator)
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Trained in fp32 next to a ViT that may run in half precision.
        return self.linear_2(F.gelu(self.linear_1(x.to(self.linear_1.weight.dtype))))


def _row(tokenizer: Tokenizer, question: str, answer: str | None, has_image: bool, n_image: int):
    """(prompt ids with 0 in the image slots, answer ids, first image slot or None)."""
    before, _, after = vicuna_v1(user_message(question, has_image)).partition(IMAGE)
    head = [tokenizer.bos_id] + tokenizer.encode(before, bos=False, eos=False)
    prompt = head + ([0] * n_image + tokenizer.encode(after, bos=False, eos=False) if has_image else [])
    answer_ids = [] if answer is None else tokenizer.encode(answer, bos=False, eos=True)
    return prompt, answer_ids, len(head) if has_image else None


def build_llava_batch(tokenizer: Tokenizer, examples: Sequence[tuple[str, str | None, bool]],
                      n_image_tokens: int, max_len: int | None = None) -> LavinBatch:
    """(question, answer or None, has_image) per example -> a left-padded batch (no modality slot)."""
    if not examples:
        raise ValueError("build_llava_batch needs at least one example")
    rows = [_row(tokenizer, q, a, img, n_image_tokens) for q, a, img in examples]
    for i, (prompt, answer, _) in enumerate(rows):
        if max_len is not None and len(prompt) + len(answer) > max_len:
            raise ValueError(f"example {i} needs {len(prompt) + len(answer)} slots, more than max_len={max_len}")
    B, T = len(rows), max(len(p) + len(a) for p, a, _ in rows)
    tokens = torch.zeros(B, T, dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    valid, prompt_mask, image_slots = (torch.zeros(B, T, dtype=torch.bool) for _ in range(3))
    for b, (prompt, answer, image_at) in enumerate(rows):
        start = T - len(prompt) - len(answer)
        tokens[b, start:] = torch.tensor(prompt + answer)
        valid[b, start:] = True
        prompt_mask[b, start:start + len(prompt)] = True
        if image_at is not None:
            image_slots[b, start + image_at:start + image_at + n_image_tokens] = True
        if answer:
            labels[b, start + len(prompt) - 1:T - 1] = torch.tensor(answer)
    return LavinBatch(tokens=tokens, positions=(valid.cumsum(1) - 1).clamp(min=0), key_mask=valid,
                      prompt_mask=prompt_mask, modality_slot=torch.zeros_like(valid), image_slots=image_slots,
                      labels=labels, has_image=torch.tensor([bool(e[2]) for e in examples]))


class Llava(nn.Module):
    PROJECTOR = "adapter_projector"  # the visual projector's attribute (its own learning rate: --projector-lr)

    def __init__(self, cfg: LlavaConfig):
        super().__init__()
        self.cfg = cfg
        self.llama = Llama(cfg.llama)
        self.vision_tower = VisionTransformer(cfg.vision)
        # "adapter" in the name: trained with the adapters (eas.adapters.attach.mark_trainable), as
        # LLaVA-EAS trains mm_projector; after a merge it is an ordinary layer.
        self.adapter_projector = Projector(cfg.vision.width, cfg.llama.dim)

    def init_weights(self, generator: torch.Generator | None = None) -> "Llava":
        self.llama.init_weights(generator)
        self.vision_tower.init_weights(generator)
        self.adapter_projector.reset_parameters(generator)
        return self

    def build_batch(self, tokenizer: Tokenizer, examples: Sequence[tuple[str, str | None, bool]]) -> LavinBatch:
        """(task prompt, answer or None, has_image) -> batch; the prompts the tasks write for LaVIN
        (eas/data) become LLaVA questions, so both wirings tune on the same task records."""
        if tokenizer.vocab_size > self.cfg.llama.vocab_size:
            raise ValueError(f"tokenizer {tokenizer.path} has {tokenizer.vocab_size} pieces, the model only "
                             f"{self.cfg.llama.vocab_size} embeddings")
        questions = [(llava_question(prompt), answer, has_image) for prompt, answer, has_image in examples]
        return build_llava_batch(tokenizer, questions, self.cfg.n_image_tokens, self.cfg.llama.max_seq_len)

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """[N, 3, S, S] -> [N, grid², llama.dim]: patch features of the chosen layer, CLS dropped."""
        return self.adapter_projector(self.vision_tower.hidden(pixels, self.cfg.feature_blocks)[:, 1:])

    def embed(self, batch: LavinBatch, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """Input embeddings [B, T, C]; pixels [B, 3, S, S] (rows of text-only examples ignored) or None."""
        return place_images(self.llama.tok_embeddings(batch.tokens), batch, pixels, self.image_tokens)

    def forward(self, batch: LavinBatch, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """Training/scoring path without a cache: logits [B, T, V]."""
        h = self.llama.hidden(self.embed(batch, pixels), batch.positions, batch.key_mask, prompt_mask=batch.prompt_mask)
        return self.llama.output(h)

    def prefill(self, batch: LavinBatch, pixels: torch.Tensor | None, state: State) -> tuple[torch.Tensor, State]:
        return self.llama.prefill(self.embed(batch, pixels), batch.positions, batch.key_mask, state,
                                  batch.prompt_mask)

    @torch.no_grad()
    def generate(self, batch: LavinBatch, pixels: torch.Tensor | None, max_new_tokens: int, *, eos_id: int,
                 **sampling) -> list[list[int]]:
        return generate(self.llama, self.embed(batch, pixels), batch.positions, batch.key_mask, max_new_tokens,
                        eos_id=eos_id, prompt_mask=batch.prompt_mask, **sampling)
