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
from eas.io.files import atomic_write


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
            raise TokenizerError(f"{self.path} is not a readable SentencePiece model (tiktoken files such as "
                                 f"Llama-3's and Hugging Face tokenizer.json are not supported): {e}") from e
        self.vocab_size = self.sp.vocab_size()
        self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()
        if self.bos_id < 0 or self.eos_id < 0:
            raise TokenizerError(f"{self.path}: the model defines no BOS or EOS piece "
                                 f"(bos_id={self.bos_id}, eos_id={self.eos_id})")

    def encode(self, text: str, bos: bool, eos: bool) -> list[int]:
        ids = self.sp.encode(text)
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

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


# SentencePiece skips sentences longer than max_sentence_length bytes, so training texts are cut
# into chunks of whole lines below this many characters (at most 4 bytes each in UTF-8).
CHUNK_CHARS = 2000


def _chunks(text: str) -> list[str]:
    chunks, current = [], ""
    for line in text.split("\n"):
        while len(line) > CHUNK_CHARS:
            chunks.append(line[:CHUNK_CHARS])
            line = line[CHUNK_CHARS:]
        if current and len(current) + 1 + len(line) > CHUNK_CHARS:
            chunks.append(current)
            current = line
        else:
            current = f"{current}\n{line}" if current else line
    return chunks + [current] if current else chunks


def train_tokenizer(texts: Iterable[str], path: str | Path, vocab_size: int, model_type: str = "bpe") -> Tokenizer:
    """Train a byte-fallback SentencePiece model with LLaMA's special ids; write it to ``path``.

    Identity normalisation, kept whitespace, whitespace-only pieces and "\\n" as its own piece make
    decode(encode(s)) == s for any text; byte fallback covers characters never seen in training.
    Texts are cut into multi-line chunks, not single lines: encode() adds the dummy "▁" only at
    the start of a string, so a word after a newline must be seen without it in training too.
    One thread and no sentence sampling make the file a function of the texts alone; it is built
    in memory, so the output path is not recorded in it. vocab_size must exceed 259 (3 specials +
    256 bytes) plus the distinct characters.
    """
    sentences = [c for text in texts for c in _chunks(text) if c.strip()]
    buffer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=buffer,
            model_type=model_type, vocab_size=vocab_size,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
            byte_fallback=True, user_defined_symbols=["\n"], split_digits=True,
            allow_whitespace_only_pieces=True, character_coverage=0.9995,
            input_sentence_size=0, shuffle_input_sentence=False, num_threads=1,
            max_sentence_length=4 * CHUNK_CHARS + 16, minloglevel=2)
    except RuntimeError as e:
        raise TokenizerError(f"training a {vocab_size}-piece tokenizer for {path} failed: {e}") from e
    atomic_write(path, lambda f: f.write(buffer.getvalue()), TokenizerError)
    return Tokenizer(path)
