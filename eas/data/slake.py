"""Slake (Liu et al. 2021), medical VQA: loader and the open/closed metrics.

On disk: `train.json`, `validate.json`, `test.json`, each a JSON list of questions
({img_id, img_name, question, answer, q_lang, answer_type, qid, ...}), and images at
`imgs/<img_name>`. English questions only by default (the word-level scores assume spaces
between words). The prompt is LaVIN's question/response frame; the authors ran Slake only on
LLaVA, so there is no LaVIN original to match.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from eas.data.metrics import bleu1, contains_answer, exact_match, task_scores, token_f1
from eas.data.prompt import PromptFormat
from eas.errors import DataError
from eas.io.files import read_json

# "val" is accepted too, since that is what the other tasks call their validation split.
SPLIT_FILES = {"train": "train.json", "validate": "validate.json", "val": "validate.json",
               "test": "test.json"}
ANSWER_TYPES = ("OPEN", "CLOSED")
_REQUIRED = ("img_name", "question", "answer", "q_lang", "answer_type")
SLAKE_FORMAT = PromptFormat("slake", "Question: {question}\nResponse:", question=None, max_new_tokens=10,
                            answer="a short answer: a word or phrase, yes/no for closed questions")
# Under --arch llava: LLaVA-1.5's short-answer instruction (its VQA fine-tuning and eval prompts);
# LLaVA-EAS's own Slake file is not public, so this is the LLaVA-1.5 convention, not a copy of it.
SLAKE_LLAVA_FORMAT = PromptFormat("slake", "{question}\nAnswer the question using a single word or phrase.",
                                  question=None, max_new_tokens=10, answer=SLAKE_FORMAT.answer)


@dataclass(frozen=True)
class SlakeExample:
    qid: str
    image: Path
    question: str
    target: str  # the gold answer
    answer_type: str  # OPEN or CLOSED
    lang: str
    fmt: PromptFormat = SLAKE_FORMAT  # SLAKE_LLAVA_FORMAT under --arch llava

    @property
    def prompt(self) -> str:
        return self.fmt.fill(self.question)


def load_slake(root: str | Path, split: str = "test", lang: str | None = "en",
               check_images: bool = True) -> list[SlakeExample]:
    """Questions of one split; lang=None keeps every language."""
    root = Path(root)
    if split not in SPLIT_FILES:
        raise DataError(f"unknown Slake split {split!r}; expected one of {sorted(SPLIT_FILES)}")
    path = root / SPLIT_FILES[split]
    records = read_json(path, "Slake file", DataError)
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of questions at the top level")
    examples = []
    for i, r in enumerate(records):
        where = f"{path}: entry {i}"
        if not isinstance(r, dict):
            raise DataError(f"{where} is not an object")
        for key in _REQUIRED:
            if key not in r:
                raise DataError(f"{where} lacks key '{key}'")
        answer_type = str(r["answer_type"]).upper()
        if answer_type not in ANSWER_TYPES:
            raise DataError(f"{where}: key 'answer_type' is {r['answer_type']!r}, expected "
                            f"OPEN or CLOSED")
        if lang is not None and r["q_lang"] != lang:
            continue
        image = root / "imgs" / str(r["img_name"])
        if check_images and not image.is_file():
            raise DataError(f"{where}: image file {image} is missing")
        # Some answers are numbers in the JSON; the metrics compare text.
        examples.append(SlakeExample(str(r.get("qid", i)), image, str(r["question"]),
                                     str(r["answer"]), answer_type, str(r["q_lang"])))
    return examples


def score_slake(predictions: Sequence[str], examples: Sequence[SlakeExample]) -> dict:
    """Percentages on normalised words (eas.data.metrics.task_scores shape). The headline accuracy
    is the "gt in pred" hit rate over every question, open and closed; the breakdown holds the
    closed hit rate, the open hit rate ("recall") and the open exact match, token F1 and BLEU-1."""
    if len(predictions) != len(examples):
        raise DataError(f"{len(predictions)} predictions for {len(examples)} Slake questions")
    closed = [(p, e.target) for p, e in zip(predictions, examples) if e.answer_type == "CLOSED"]
    open_ = [(p, e.target) for p, e in zip(predictions, examples) if e.answer_type == "OPEN"]
    closed_hits = sum(contains_answer(p, g) for p, g in closed)
    open_hits = sum(contains_answer(p, g) for p, g in open_)
    return task_scores(closed_hits + open_hits, len(examples), {
        "closed_hit": (closed_hits, len(closed)),
        "open_hit": (open_hits, len(open_)),
        "open_exact": (sum(exact_match(p, g) for p, g in open_), len(open_)),
        "open_f1": (sum(token_f1(p, g) for p, g in open_), len(open_)),
        "open_bleu1": (sum(bleu1(p, g) for p, g in open_), len(open_)),
    }, "gold answer's words found in the generation ('gt in pred'), open and closed questions")
