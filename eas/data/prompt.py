"""A task's prompt format: the template its prompts are built from and the answer it expects.

Each task module defines one (AID_FORMAT, SCIENCEQA_FORMAT, SLAKE_FORMAT) and builds every
example's prompt with `fill`; merged.pt and the export manifest record it, so that generation
after tuning (PyTorch, ONNX Runtime, TensorRT, the C++ app) wraps a user's question exactly as the
training prompts were wrapped. A model that never saw its template answers nothing useful: the
tuned tiny model stops at once on a bare "What is the label for this image?".
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from eas.errors import UsageError

SLOT = "{question}"


@dataclass(frozen=True)
class PromptFormat:
    task: str
    template: str           # holds SLOT once; replaced verbatim (no other braces are special)
    question: str | None    # the task's own question when every example asks the same (AID), else None
    max_new_tokens: int     # the decode budget the task's answers need
    answer: str             # what the answer looks like, in words

    def __post_init__(self):
        if self.template.count(SLOT) != 1:
            raise ValueError(f"prompt template {self.template!r} must hold {SLOT} exactly once")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")

    def fill(self, question: str) -> str:
        # str.replace rather than str.format: a question may hold braces, and the C++ app does the same.
        return self.template.replace(SLOT, question)

    def prompt(self, question: str | None, raw: bool = False) -> str:
        """What the model reads for a user's question: the question in the template, the task's own
        question when none is given, or (raw) the text as typed."""
        if raw:
            if question is None:
                raise UsageError("--raw sends --prompt untouched: pass --prompt")
            return question
        if question is not None:
            return self.fill(question)
        if self.question is None:
            raise UsageError(f"the model was tuned on {self.task}, which has no question of its own: pass --prompt "
                             f"(it fills the template {self.template!r})")
        return self.fill(self.question)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record, where: str) -> PromptFormat:
        """A recorded format; anything malformed raises ValueError naming `where`."""
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(record, dict) or sorted(record) != sorted(names):
            raise ValueError(f"{where}: prompt format must be an object with keys {names}, got {record!r}")
        kinds = {"task": str, "template": str, "question": (str, type(None)), "max_new_tokens": int, "answer": str}
        bad = [k for k, kind in kinds.items() if not isinstance(record[k], kind) or isinstance(record[k], bool)]
        if bad:
            raise ValueError(f"{where}: prompt format key(s) {bad} have the wrong type")
        try:
            return cls(**record)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from e
