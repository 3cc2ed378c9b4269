"""SentencePiece tokenizer with LLaMA's conventions: unk 0, BOS 1, EOS 2, no pad id.

Batches pad with id 0 and rely on masks (key_mask, labels = -100), as LaVIN does, so the pad
token's embedding never reaches a real position.
"""
from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm
import torch

from eas.errors import TokenizerError


class Tokenizer:
    pad_id = 0  # LLaMA's vocabulary has no pad piece; id 0 (unk) fills masked slots

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise TokenizerError(f"tokenizer model {self.path} does not exist")
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.load(str(self.path))
        except (OSError, RuntimeError) as e:
            raise TokenizerError(f"{self.path} is not a readable SentencePiece model: {e}") from e
        self.vocab_size = self.sp.vocab_size()
        self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()
        if self.bos_id < 0 or self.eos_id < 0:
            raise TokenizerError(f"{self.path}: the model defines no BOS or EOS piece "
                                 f"(bos_id={self.bos_id}, eos_id={self.eos_id})")

    def encode(self, text: str, bos: bool, eos: bool) -> list[int]:
        ids = self.sp.encode(text)
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def encode_batch(self, texts: Sequence[str], bos: bool = True, eos: bool = False, device=None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Texts -> left-padded (tokens, positions, key_mask) [B, T], ready for prefill."""
        return left_pad([self.encode(t, bos, eos) for t in texts], self.pad_id, device)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([int(i) for i in ids])


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int = 0, device=None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token lists -> (tokens, positions, key_mask), each [B, T], pads first.

    Left padding puts every example's last prompt token in the same column, which is what lets a
    batch decode in lock-step; positions restart at 0 at each example's first real token.
    """
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("left_pad needs at least one sequence and no empty ones")
    T = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    key_mask = torch.zeros(len(seqs), T, dtype=torch.bool)
    for b, s in enumerate(seqs):
        tokens[b, T - len(s):] = torch.tensor(list(s), dtype=torch.long)
        key_mask[b, T - len(s):] = True
    positions = (key_mask.cumsum(1) - 1).clamp(min=0)
    return tokens.to(device), positions.to(device), key_mask.to(device)


def train_tokenizer(texts: Iterable[str], path: str | Path, vocab_size: int) -> Tokenizer:
    """Train a small byte-fallback SentencePiece model with LLaMA's special ids; write it to ``path``.

    Meant for tiny bases and tests. Identity normalisation, kept whitespace and "\\n" as its own
    piece make decode(encode(s)) == s for any text; byte fallback covers characters never seen in
    training. vocab_size must exceed 259 (3 specials + 256 bytes) plus the distinct characters.
    """
    buffer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(list(texts)), model_writer=buffer,
            vocab_size=vocab_size, model_type="bpe", character_coverage=1.0, byte_fallback=True,
            normalization_rule_name="identity", remove_extra_whitespaces=False, split_by_whitespace=True,
            user_defined_symbols=["\n"], unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            max_sentence_length=1 << 16, num_threads=1, minloglevel=2)
    except RuntimeError as e:
        raise TokenizerError(f"training a {vocab_size}-piece tokenizer for {path} failed: {e}") from e
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return Tokenizer(path)
