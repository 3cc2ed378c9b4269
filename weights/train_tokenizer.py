"""Train the tiny base's SentencePiece tokenizer on text that ships offline.

    python weights/train_tokenizer.py [--out weights/tiny/tokenizer.model] [--vocab 2000]

Text: the training split of CPython's docstrings and `pydoc_data.topics` (see tiny_data.py) plus
every prompt and answer string of the pretraining image tasks and the downstream prompt and labels
(as words only). Ids follow LLaMA (unk 0, bos 1, eos 2, no pad id) and so do the options that make
decode(encode(s)) == s for any string: identity normalisation, whitespace kept, byte fallback,
newline as its own piece. One thread and no sentence sampling make the file a function of the
text alone, hence of the Python version that supplies the docstrings.
"""
from __future__ import annotations

import argparse
import io
import platform
import sys
import time
from pathlib import Path

import sentencepiece as spm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script without installing

from weights.tiny_data import task_text_lines, text_documents  # noqa: E402

# The shipped weights/tiny/tokenizer.model was trained under this Python: its stdlib docstrings are
# most of the text, so another version gives a (slightly) different, equally valid tokenizer.
RECIPE_PYTHON = "3.11.7"

# SentencePiece skips sentences longer than max_sentence_length bytes, so documents are cut into
# chunks of whole lines below this many characters (at most 4 bytes each in UTF-8).
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


def training_sentences() -> list[str]:
    """Multi-line chunks, not single lines: encode() adds the dummy '▁' only at the start of a
    string, so a word after a newline must be seen without it in training too (else 'Response'
    after '\n' is spelled from fragments)."""
    texts = [d.text for d in text_documents("train")] + task_text_lines()
    return [c for text in texts for c in _chunks(text) if c.strip()]


def train(out: Path, vocab_size: int = 2000, model_type: str = "bpe") -> spm.SentencePieceProcessor:
    sentences = training_sentences()
    model = io.BytesIO()
    # Writing through model_writer keeps the output path out of the stored trainer spec, so the
    # file's bytes do not depend on where it is written.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model,
        model_type=model_type, vocab_size=vocab_size,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        byte_fallback=True, user_defined_symbols=["\n"], split_digits=True,
        allow_whitespace_only_pieces=True, character_coverage=0.9995,
        input_sentence_size=0, shuffle_input_sentence=False, num_threads=1,
        max_sentence_length=4 * CHUNK_CHARS + 16, minloglevel=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(model.getvalue())
    return spm.SentencePieceProcessor(model_file=str(out))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "tiny" / "tokenizer.model")
    ap.add_argument("--vocab", type=int, default=2000)
    ap.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    sp = train(args.out, args.vocab, args.model_type)
    sample = "Image: N/A\n" + task_text_lines(n_captions=1)[-1] + "\n\tdef f(x):  return x ** 2  # ünïcödé ✓"
    if sp.decode(sp.encode(sample)) != sample:
        raise SystemExit(f"{args.out}: round trip failed on {sample!r}")
    if platform.python_version() != RECIPE_PYTHON:
        print(f"note: Python {platform.python_version()}, the shipped tokenizer used {RECIPE_PYTHON}")
    print(f"trained {args.model_type} tokenizer, vocab {sp.get_piece_size()}, in "
          f"{time.perf_counter() - t0:.1f} s -> {args.out}")


if __name__ == "__main__":
    main()
