"""The error types of the library. run.py prints any EASError as one line and exits with 2.

Each message names the file, key, flag or value at fault and what was expected.
"""
from __future__ import annotations

import sys


class EASError(Exception):
    """Bad input the user can fix: never shown as a traceback."""


class UsageError(EASError, ValueError):
    """A flag or argument out of range, or flags that contradict each other."""


class CheckpointError(EASError, ValueError):
    """A model, merged.pt or run-state file that is missing, corrupt or of the wrong kind."""


class DataError(EASError, ValueError):
    """Malformed or missing task data; the message names the file, key or folder at fault."""


class ImageError(DataError):
    """An image file that cannot be decoded."""


class TokenizerError(EASError, ValueError):
    """A missing or unusable tokenizer model."""


class RunFolderError(EASError, OSError):
    """The run folder (--out) cannot be created, written or resumed."""


def exit_status(action, *args) -> int:
    """A command-line entry point's status: 0 when `action(*args)` succeeds; 2 after printing an
    EASError as one line `error: ...` on stderr (its whitespace folded, so nothing wraps)."""
    try:
        action(*args)
    except EASError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0
