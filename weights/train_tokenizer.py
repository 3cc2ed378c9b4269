"""Train the tiny base's SentencePiece tokenizer on text that ships offline.

    python weights/train_tokenizer.py [--out weights/tiny/tokenizer.model] [--vocab 2000]

Text: the training split of CPython's docstrings and `pydoc_data.topics` (see tiny_data.py) plus
every prompt and answer string of the pretraining image tasks and the downstream prompt and labels
(as words only). The trainer and its options are eas.model.tokenizer.train_tokenizer's; the file
is a function of the text alone, hence of the Python version that supplies the docstrings.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script without installing

from eas.errors import EASError  # noqa: E402
from eas.model.tokenizer import Tokenizer, train_tokenizer  # noqa: E402
from weights.tiny_data import task_text_lines, text_documents  # noqa: E402

# The shipped weights/tiny/tokenizer.model was trained under this Python: its stdlib docstrings are
# most of the text, so another version gives a (slightly) different, equally valid tokenizer.
RECIPE_PYTHON = "3.11.7"


def train(out: Path, vocab_size: int = 2000, model_type: str = "bpe") -> Tokenizer:
    texts = [d.text for d in text_documents("train")] + task_text_lines()
    return train_tokenizer(texts, out, vocab_size, model_type)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "tiny" / "tokenizer.model")
    ap.add_argument("--vocab", type=int, default=2000)
    ap.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        tok = train(args.out, args.vocab, args.model_type)
    except EASError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sample = "Image: N/A\n" + task_text_lines(n_captions=1)[-1] + "\n\tdef f(x):  return x ** 2  # ünïcödé ✓"
    if tok.decode(tok.encode(sample, False, False)) != sample:
        print(f"error: {args.out}: round trip failed on {sample!r}", file=sys.stderr)
        return 2
    if platform.python_version() != RECIPE_PYTHON:
        print(f"note: Python {platform.python_version()}, the shipped tokenizer used {RECIPE_PYTHON}")
    print(f"trained {args.model_type} tokenizer, vocab {tok.vocab_size}, in "
          f"{time.perf_counter() - t0:.1f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
