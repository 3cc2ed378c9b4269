"""Batched generation over left-padded prompts: one prefill, then one decode_step per new token.

Works on input embeddings, so a plain LLaMA (``llama.tok_embeddings(tokens)``) and LaVIN
(``Lavin.embed``) share the same loop.
"""
from __future__ import annotations

import torch

from eas.model.llama import Llama


def nucleus_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """softmax(logits / T) restricted to the smallest top set whose mass reaches top_p, renormalised."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)  # the top token always stays
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return kept / kept.sum(-1, keepdim=True)


def next_token(logits: torch.Tensor, temperature: float, top_p: float,
               generator: torch.Generator | None) -> torch.Tensor:
    """[B, V] logits -> [B] token ids: argmax when temperature == 0, else nucleus sampling."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = nucleus_probs(logits, temperature, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(llama: Llama, embeds: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor,
             max_new_tokens: int, *, eos_id: int, temperature: float = 0.0, top_p: float = 1.0,
             generator: torch.Generator | None = None, prompt_mask: torch.Tensor | None = None
             ) -> list[list[int]]:
    """Generate up to ``max_new_tokens`` per example from left-padded prompt embeddings [B, T, C].

    Returns each example's new tokens, without the EOS that ended it. An example stops at its
    EOS; the loop stops when all have. prompt_mask: positions adapters pool over (LaVIN passes
    its own, which includes the modality slot); default key_mask.
    """
    if max_new_tokens < 0 or temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need max_new_tokens >= 0, temperature >= 0, 0 < top_p <= 1; got "
                         f"{max_new_tokens}, {temperature}, {top_p}")
    B, T, _ = embeds.shape
    out: list[list[int]] = [[] for _ in range(B)]
    if max_new_tokens == 0:
        return out
    state = llama.new_state(B, T + max_new_tokens, device=embeds.device)
    logits, state = llama.prefill(embeds, positions, key_mask, state, prompt_mask)
    first_new_position = positions[:, -1] + 1  # left-padded: the last column is every prompt's end
    done = [False] * B
    for step in range(max_new_tokens):
        token = next_token(logits, temperature, top_p, generator)
        for b, t in enumerate(token.tolist()):
            if not done[b]:
                done[b] = t == eos_id
                if not done[b]:
                    out[b].append(t)
        if all(done) or step == max_new_tokens - 1:
            break
        # Finished examples keep decoding (their tokens are discarded) so the batch stays in lock-step.
        logits, state = llama.decode_step(token, first_new_position + step, state)
    return out
