"""Hugging Face weight folders: one file or index-linked shards, safetensors or PyTorch ``.bin``.

Names and shapes come from file headers (safetensors) or memory-mapped pickles (``.bin``), so a
loader checks a whole checkpoint against its model before converting a single tensor; tensors
are then read one at a time. Every failure is a CheckpointError naming the file.
"""
from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from eas.errors import CheckpointError
from eas.io.files import read_json

INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLES = ("model.safetensors", "pytorch_model.bin")


def _open_bin(path: Path) -> dict[str, torch.Tensor]:
    try:  # mmap: a tensor's bytes are read only when it is converted
        state = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as e:
        raise CheckpointError(f"{path}: cannot read as a PyTorch checkpoint: {e}") from e
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors")
    return state


def _header(path: Path) -> dict[str, tuple[int, ...]]:
    try:
        with safe_open(path, framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file: {e}") from e


def _index(path: Path) -> dict[Path, list[str]]:
    data = read_json(path, "checkpoint index", CheckpointError)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{path}: no 'weight_map' object")
    files: dict[Path, list[str]] = {}
    for name, file in weight_map.items():
        files.setdefault(path.parent / file, []).append(name)
    absent = [str(f) for f in files if not f.is_file()]
    if absent:
        raise CheckpointError(f"{path}: lists shard files that do not exist: {absent}")
    return files


class WeightFiles:
    """The tensors of a Hugging Face folder: ``shapes`` (name -> shape) and ``file`` (name -> file)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = next((self.folder / n for n in INDEXES if (self.folder / n).is_file()), None)
        single = next((self.folder / n for n in SINGLES if (self.folder / n).is_file()), None)
        if index is None and single is None:
            found = sorted(p.name for p in self.folder.glob("*") if p.suffix in (".bin", ".safetensors", ".pth"))
            raise CheckpointError(f"{self.folder}: no {' or '.join(SINGLES + INDEXES)} (found {found or 'no weight files'})")
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.file: dict[str, Path] = {}
        self._bins: dict[Path, dict[str, torch.Tensor]] = {}
        for file, names in (_index(index) if index else {single: None}).items():
            if file.suffix == ".bin":
                self._bins[file] = _open_bin(file)
                header = {k: tuple(t.shape) for k, t in self._bins[file].items()}
            else:
                header = _header(file)
            absent = set(names or ()) - header.keys()
            if absent:
                raise CheckpointError(f"{file}: lacks tensors its index assigns to it: {sorted(absent)}")
            for name in (names if names is not None else header):
                self.shapes[name], self.file[name] = header[name], file

    def get(self, name: str) -> torch.Tensor:
        """One tensor, read from its file now (.bin files stay memory-mapped from the listing)."""
        file = self.file[name]
        if file.suffix == ".bin":
            return self._bins[file][name]
        with safe_open(file, framework="pt") as f:
            return f.get_tensor(name)

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) for every tensor, each read when it is reached."""
        return ((name, self.get(name)) for name in self.file)
