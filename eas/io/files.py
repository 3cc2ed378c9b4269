"""File-system primitives every writer and reader shares: atomic writes and JSON with named errors."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from eas.errors import CheckpointError, EASError


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None], error: type[EASError] = CheckpointError) -> Path:
    """Call write(f) on a temporary file next to `path`, fsync it, then rename it over `path`.

    A crash or a full disk never leaves a truncated `path` nor a stray temporary file; a
    file-system failure becomes `error` naming the path.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    except OSError as e:
        raise error(f"cannot write {path}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise error(f"cannot write {path}: {e.strerror or e}") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str, error: type[EASError] = CheckpointError) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")), error)


def read_json(path: str | Path, what: str, error: type[EASError] = CheckpointError) -> Any:
    """Parse a JSON file; a missing, unreadable or malformed file raises `error` naming `what` and the path."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise error(f"{what} {path} does not exist") from e
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"cannot read {what} {path}: {e}") from e
    except json.JSONDecodeError as e:
        raise error(f"{what} {path} is not valid JSON: {e}") from e
