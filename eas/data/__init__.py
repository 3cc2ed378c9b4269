"""Task data: AID, a synthetic AID-like stand-in, ScienceQA and Slake, plus shared scoring.

Each task module turns the data set's own on-disk format into frozen example records that share
three fields, `image` (a path or None), `prompt` (the text the model reads) and `target` (the
text it is trained to produce), next to the task's own gold fields and a `score_*` function.
Only paths travel in the records: images are decoded when they are read, by `open_image`.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from PIL import Image


class DataError(ValueError):
    """Malformed or missing task data; the message names the file, key or folder at fault."""


class DataWarning(UserWarning):
    """Something in a data set was skipped (a stray file, an unreadable image)."""


def open_image(path: str | Path) -> Image.Image:
    """Decode one image file to RGB; a corrupt or unreadable file raises DataError naming it."""
    try:
        with Image.open(path) as image:
            # convert() forces a full decode, so truncated files fail here and not in a batch.
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path}: {e}") from e


def iter_readable(examples: Iterable[Any], skipped: list[str] | None = None
                  ) -> Iterator[tuple[Any, Image.Image]]:
    """Yield (example, RGB image) for every example whose `image` decodes; skip the others.

    One unreadable file in ten thousand should not stop a run: it is skipped, its message is
    appended to `skipped` (when given) and announced once as a DataWarning at the end.
    """
    bad: list[str] = []
    for example in examples:
        try:
            image = open_image(example.image)
        except DataError as e:
            bad.append(str(e))
            continue
        yield example, image
    if bad:
        if skipped is not None:
            skipped.extend(bad)
        shown = "; ".join(bad[:3]) + ("; ..." if len(bad) > 3 else "")
        warnings.warn(f"skipped {len(bad)} unreadable image(s): {shown}", DataWarning, stacklevel=2)


def drop_unreadable(examples: Iterable[Any], skipped: list[str] | None = None) -> list[Any]:
    """The examples whose image decodes (each is decoded once, then released)."""
    return [example for example, _ in iter_readable(examples, skipped)]
