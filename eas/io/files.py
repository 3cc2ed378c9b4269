"""File-system primitives every writer and reader shares: atomic writes and folders, JSON with named errors."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from eas.errors import CheckpointError, EASError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def replacing(path: str | Path, error: type[EASError] = CheckpointError) -> Iterator[Path]:
    """Yield a temporary path next to `path` to write; when the block succeeds, fsync it and rename
    it over `path`.

    A crash or a full disk never leaves a truncated `path` nor a stray temporary file; a
    file-system failure becomes `error` naming the path.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        os.close(fd)
        os.chmod(name, 0o666 & ~_umask())  # mkstemp's 0600 would outlive the rename
    except OSError as e:
        raise error(f"cannot write {path}: {e.strerror or e}") from e
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise error(f"cannot write {path}: {e.strerror or e}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None], error: type[EASError] = CheckpointError) -> Path:
    """Call write(f) on a binary file that replaces `path` only once complete (see `replacing`)."""
    with replacing(path, error) as tmp, open(tmp, "wb") as f:
        try:
            write(f)
        except RuntimeError as e:  # torch.save's zip writer reports a failed write this way, hiding ENOSPC
            free = shutil.disk_usage(Path(path).parent).free
            reason = f"No space left on device ({free} bytes free)" if free < 1 << 20 else str(e).strip().splitlines()[0]
            raise OSError(reason) from e
    return Path(path)


@contextmanager
def new_folder(path: str | Path, error: type[EASError] = CheckpointError) -> Iterator[Path]:
    """Yield an empty temporary sibling folder that is renamed to `path` when the block succeeds.

    `path` must not exist yet or be an empty folder (checked before any work), so a converter that
    fails half-way leaves no partial output and never mixes its files with older ones.
    """
    path = Path(path)
    if path.exists() and not (path.is_dir() and not any(path.iterdir())):
        raise error(f"{path} already exists and is not an empty folder; remove it or choose another")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    except OSError as e:
        raise error(f"cannot create {path}: {e.strerror or e}") from e
    try:
        yield tmp
        try:
            os.replace(tmp, path)  # rename(2) may replace an empty folder
        except OSError as e:
            raise error(f"cannot write {path}: {e.strerror or e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
