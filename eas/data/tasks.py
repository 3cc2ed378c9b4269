"""Tuning tasks: each data set as train / val / test example lists, its scorer and prompt format.

Every example record carries `image` (a path or None), `prompt` (built from the task's
eas.data.prompt.PromptFormat, which also holds the decode budget) and `target` (eas/data). The val
part is what the search reward reads; the test part is never seen by search or tuning.

Each task has a format per wiring: LaVIN's "Question: ...\nResponse:" frame, and under --arch llava
the user's message of LLaVA-1.5's vicuna_v1 conversation (eas.model.llava wraps it), with the
answer (and, for ScienceQA, its extraction) LLaVA's.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

import dataclasses
import functools

from eas.data.aid import AID_FORMAT, AID_LLAVA_FORMAT, paper_split, scan_aid, score_aid
from eas.data.prompt import PromptFormat
from eas.data.scienceqa import (SCIENCEQA_FORMAT, SCIENCEQA_LLAVA_FORMAT, extract_llava_answer, load_scienceqa,
                                score_scienceqa)
from eas.data.slake import SLAKE_FORMAT, SLAKE_LLAVA_FORMAT, load_slake, score_slake
from eas.data.synthetic_aid import ensure_synthetic_aid
from eas.errors import DataError, ImageError
from eas.model.image import load_image

TASKS = ("aid", "scienceqa", "slake")


@dataclass
class TaskData:
    name: str
    train: list
    val: list
    test: list
    score: Callable[[Sequence[str], Sequence], dict]  # -> eas.data.metrics.task_scores shape
    prompt_format: PromptFormat  # every example's prompt fills its template; merged.pt records it
    synthetic: bool = False
    source: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """How every printed number names the data: synthetic data is always called synthetic."""
        return f"{self.name} (SYNTHETIC)" if self.synthetic else self.name


def load_task(name: str, data_root: str | None, *, cache_dir: str | Path, setting: str = "20", seed: int = 0,
              image_size: int = 64, synthetic_per_class: int = 100, val_fraction: float = 0.1,
              arch: str = "lavin") -> TaskData:
    """The task's splits with prompts in the format of `arch` (lavin or llava)."""
    if arch not in ("lavin", "llava"):
        raise DataError(f"unknown wiring {arch!r}; expected lavin or llava")
    llava = arch == "llava"
    if name == "aid":
        return _aid(data_root, cache_dir, setting, seed, image_size, synthetic_per_class, val_fraction, llava)
    if name not in TASKS:
        raise DataError(f"unknown task {name!r}; choose one of {TASKS}")
    if data_root is None:
        raise DataError(f"--task {name} needs --data-root (only AID has a synthetic stand-in)")
    if name == "scienceqa":
        parts = [load_scienceqa(data_root, split, arch=arch) for split in ("train", "val", "test")]
        score = functools.partial(score_scienceqa, extract=extract_llava_answer) if llava else score_scienceqa
        return TaskData(name, *parts, score=score, prompt_format=SCIENCEQA_LLAVA_FORMAT if llava else SCIENCEQA_FORMAT,
                        source=str(data_root))
    fmt = SLAKE_LLAVA_FORMAT if llava else SLAKE_FORMAT
    parts = [[dataclasses.replace(e, fmt=fmt) for e in load_slake(data_root, split)]
             for split in ("train", "validate", "test")]
    return TaskData(name, *parts, score=score_slake, prompt_format=fmt, source=str(data_root))


def _aid(data_root, cache_dir, setting, seed, image_size, per_class, val_fraction, llava) -> TaskData:
    synthetic = data_root is None
    if synthetic:
        # The data set itself does not depend on --seed (only the split does), so every run of
        # a study shares one cache.
        root = ensure_synthetic_aid(Path(cache_dir), per_class=per_class, size=image_size)
    else:
        root = Path(data_root)
    scan = scan_aid(root)
    split = paper_split(scan.examples, setting, seed=seed, val_fraction=val_fraction)
    fmt = AID_LLAVA_FORMAT if llava else AID_FORMAT
    prompt = fmt.fill(fmt.question)  # one question for every image
    train, val, test = ([dataclasses.replace(e, prompt=prompt) for e in part]
                        for part in (split.train, split.val, split.test))
    return TaskData("aid", train, val, test, score=score_aid, prompt_format=fmt,
                    synthetic=synthetic or scan.synthetic, source=str(root), warnings=list(scan.warnings))


def load_pixels(examples: Sequence, image_size: int, skipped: list[str],
                load: Callable[[Path], torch.Tensor] | None = None) -> tuple[list, torch.Tensor | None]:
    """(examples whose image decodes, pixels [N, 3, S, S] or None when no example has an image).

    load: one file -> pixels (eas.model.image.pixel_loader of the model); default LaVIN's.

    Text-only examples get a zero image (the model never runs it through the ViT). An unreadable
    file drops its example and is recorded in `skipped`, so one bad file does not stop a run.
    """
    kept, images = [], []
    for e in examples:
        if e.image is None:
            kept.append(e)
            images.append(None)
            continue
        try:
            images.append(load(e.image) if load is not None else load_image(e.image, image_size))
        except ImageError as err:
            if str(err) not in skipped:
                skipped.append(str(err))
            continue
        kept.append(e)
    if all(x is None for x in images):
        return kept, None
    zeros = torch.zeros(3, image_size, image_size)
    return kept, torch.stack([zeros if x is None else x for x in images])

