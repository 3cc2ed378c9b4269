"""The run folder (--out): every file `run.py tune` writes goes through here.

Writes are atomic (eas/io/files.py), so an interrupted or failed run never leaves a truncated or
temporary file; any file-system failure is a RunFolderError naming the path. Only rank 0 writes.
"""
from __future__ import annotations

import json
from pathlib import Path

from eas.errors import RunFolderError
from eas.io.files import atomic_write, write_text_atomic
from eas.tune.train import save_checkpoint


class RunFolder:
    def __init__(self, path: Path, lead: bool):
        self.path, self.lead = Path(path), lead
        self.state = self.path / "state.pt"
        self.log_file = self.path / "log.jsonl"

    def prepare(self, resume: bool) -> None:
        """Create the folder; refuse to overwrite an earlier run's checkpoint unless resuming it."""
        if not self.lead:
            return
        if self.state.exists() and not resume:
            raise RunFolderError(f"{self.state} exists from an earlier run; pass --resume to continue it, or "
                                 f"choose another --out")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunFolderError(f"cannot create the run folder {self.path}: {e.strerror or e}") from e

    def start_log(self) -> None:
        if self.lead:
            self.write_text("log.jsonl", "")

    def log(self, record: dict) -> None:
        if self.lead:
            self._guard(self.log_file, lambda: self._append(json.dumps(record) + "\n"))

    def _append(self, line: str) -> None:
        with open(self.log_file, "a", encoding="utf-8") as f:
            f.write(line)

    def log_size(self) -> int:
        return self._guard(self.log_file, lambda: self.log_file.stat().st_size)

    def truncate_log(self, size: int) -> None:
        """Forget what was logged after the checkpoint being resumed."""
        if self.lead:
            self._guard(self.log_file, lambda: self._truncate(size))

    def _truncate(self, size: int) -> None:
        with open(self.log_file, "r+b") as f:
            f.truncate(size)

    def write_text(self, name: str, text: str) -> Path:
        return write_text_atomic(self.path / name, text, RunFolderError)

    def write(self, name: str, write) -> Path:
        """write(f) fills the binary file `name` (e.g. a figure's savefig)."""
        return atomic_write(self.path / name, write, RunFolderError)

    def copy_in(self, source: Path, name: str) -> Path:
        return self.write(name, lambda f: f.write(Path(source).read_bytes()))

    def save(self, name: str, payload: dict) -> Path:
        return save_checkpoint(self.path / name, payload, RunFolderError)

    @staticmethod
    def _guard(path: Path, action):
        try:
            return action()
        except OSError as e:
            raise RunFolderError(f"cannot write {path}: {e.strerror or e}") from e

