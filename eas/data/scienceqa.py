"""ScienceQA (Lu et al. 2022) in LaVIN's QCM -> ALE format, or LLaVA-1.5's CQM -> A under --arch
llava, with the official accuracy breakdowns.

On disk: `problems.json` (pid -> problem), `pid_splits.json` (split -> [pid]) and images at
`images/<problem split>/<pid>/<image>`. LaVIN: prompt and target follow eas_method.md §4.1;
extraction and scoring follow LaVIN's eval.py, including its random choice when no letter can be
parsed (seeded here, per question, so a score is reproducible and independent of evaluation order).
LLaVA: LLaVA-1.5's ScienceQA question (llava_test_CQM-A with --single-pred-prompt) answered by the
letter alone, read as LLaVA's eval_science_qa.py reads it (the same seeded fallback).
"""
from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from eas.data.metrics import task_scores
from eas.data.prompt import PromptFormat
from eas.errors import DataError
from eas.io.files import read_json

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
SUBJECTS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}
CATEGORIES = ("NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12")
_GRADE = re.compile(r"^grade(\d+)$")
_ANSWER_IS = re.compile(r"The answer is ([A-Z])\.")
_BARE_LETTER = re.compile(r"([A-E])\.")
# The question slot holds LaVIN's whole QCM block: the question, then "\nContext: <hint or N/A>"
# and "\nOptions: (A) ... (B) ...". 16 tokens reach the answer sentence, which comes first.
SCIENCEQA_FORMAT = PromptFormat("scienceqa", "Question: {question}\nResponse:", question=None, max_new_tokens=16,
                                answer="'The answer is <letter>.' then the lecture and solution")
# The slot holds LLaVA's CQM block: "Context: <hint or N/A>\nQuestion: ...\nOptions: (A) ... (B) ...".
SCIENCEQA_LLAVA_FORMAT = PromptFormat("scienceqa", "{question}\nAnswer with the option's letter from the given "
                                      "choices directly.", question=None, max_new_tokens=4,
                                      answer="the option's letter alone")


@dataclass(frozen=True)
class ScienceQAExample:
    pid: str
    image: Path | None
    prompt: str
    target: str
    choices: tuple[str, ...]
    answer_index: int
    subject: str    # NAT / SOC / LAN
    grade: int      # 1..12
    has_text: bool  # the official "TXT": a non-empty hint
    has_image: bool  # the official "IMG"; a question may be both TXT and IMG

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer_index]

    @property
    def categories(self) -> tuple[str, ...]:
        context = (("TXT",) if self.has_text else ()) + (("IMG",) if self.has_image else ())
        grade = "G1-6" if self.grade <= 6 else "G7-12"
        return (self.subject, *(context or ("NO",)), grade)


def build_prompt(question: str, hint: str, choices: Sequence[str], answer_index: int,
                 lecture: str, solution: str) -> tuple[str, str]:
    """(input, output) of LaVIN's QCM -> ALE format; the training text is input + output."""
    context = hint.strip() or "N/A"
    options = " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))
    # Lecture and solution keep their line breaks as a literal backslash-n, so the target stays
    # one line; both texts then get LaVIN's single-pass "  " -> " " and strip().
    lecture, solution = lecture.replace("\n", "\\n"), solution.replace("\n", "\\n")
    prompt = SCIENCEQA_FORMAT.fill(f"{question}\nContext: {context}\nOptions: {options}")
    target = f"The answer is {LETTERS[answer_index]}. BECAUSE: {lecture} {solution}"
    prompt, target = prompt.replace("  ", " ").strip(), target.replace("  ", " ").strip()
    if target.endswith("BECAUSE:"):  # no lecture and no solution: nothing to explain
        target = target[: -len("BECAUSE:")].strip()
    return prompt, target


def build_llava_prompt(question: str, hint: str, choices: Sequence[str], answer_index: int) -> tuple[str, str]:
    """(question, answer) of LLaVA-1.5's CQM -> A format: the letter is the whole answer."""
    options = " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))
    cqm = f"Context: {hint.strip() or 'N/A'}\nQuestion: {question}\nOptions: {options}".replace("  ", " ").strip()
    return SCIENCEQA_LLAVA_FORMAT.fill(cqm), LETTERS[answer_index]


def load_scienceqa(root: str | Path, split: str = "test", check_images: bool = True,
                   arch: str = "lavin") -> list[ScienceQAExample]:
    """The problems of one split, in the prompt format of `arch` (lavin or llava)."""
    root = Path(root)
    problems = _read_json(root / "problems.json", dict)
    splits = _read_json(root / "pid_splits.json", dict)
    if split not in splits:
        raise DataError(f"{root / 'pid_splits.json'} has no split '{split}'; it has "
                        f"{sorted(splits)}")
    pids = splits[split]
    if not isinstance(pids, list):
        raise DataError(f"{root / 'pid_splits.json'}: split '{split}' is not a list of pids")
    examples = []
    for pid in pids:
        pid = str(pid)
        if pid not in problems:
            raise DataError(f"{root / 'pid_splits.json'}: pid '{pid}' of split '{split}' is not "
                            f"a key of {root / 'problems.json'}")
        examples.append(_example(root, pid, problems[pid], check_images, arch))
    return examples


def _example(root: Path, pid: str, p: object, check_images: bool, arch: str) -> ScienceQAExample:
    where = f"{root / 'problems.json'}: problem '{pid}'"
    if not isinstance(p, dict):
        raise DataError(f"{where} is not an object")
    for key, kind in (("question", str), ("choices", list), ("answer", int), ("lecture", str),
                      ("solution", str), ("grade", str), ("subject", str), ("split", str)):
        if key not in p:
            raise DataError(f"{where} lacks key '{key}'")
        if not isinstance(p[key], kind) or isinstance(p[key], bool):
            raise DataError(f"{where}: key '{key}' is {p[key]!r}, expected a {kind.__name__}")
    choices = p["choices"]
    if not 2 <= len(choices) <= len(LETTERS) or not all(isinstance(c, str) for c in choices):
        raise DataError(f"{where}: key 'choices' must be 2..26 strings, got {choices!r}")
    if not 0 <= p["answer"] < len(choices):
        raise DataError(f"{where}: key 'answer' is {p['answer']}, expected an index into its "
                        f"{len(choices)} choices")
    grade = _GRADE.match(p["grade"])
    if grade is None or not 1 <= int(grade.group(1)) <= 12:
        raise DataError(f"{where}: key 'grade' is {p['grade']!r}, expected 'grade1'..'grade12'")
    if p["subject"] not in SUBJECTS:
        raise DataError(f"{where}: key 'subject' is {p['subject']!r}, expected one of "
                        f"{sorted(SUBJECTS)}")
    hint, image_name = p.get("hint") or "", p.get("image")
    if not isinstance(hint, str) or not (image_name is None or isinstance(image_name, str)):
        raise DataError(f"{where}: key 'hint' must be a string and 'image' a file name or null")
    image = root / "images" / p["split"] / pid / image_name if image_name else None
    if image is not None and check_images and not image.is_file():
        raise DataError(f"{where}: image file {image} is missing")
    if arch == "llava":
        prompt, target = build_llava_prompt(p["question"], hint, choices, p["answer"])
    else:
        prompt, target = build_prompt(p["question"], hint, choices, p["answer"], p["lecture"], p["solution"])
    return ScienceQAExample(pid, image, prompt, target, tuple(choices), p["answer"],
                            SUBJECTS[p["subject"]], int(grade.group(1)), bool(hint), bool(image_name))


def _read_json(path: Path, kind: type):
    data = read_json(path, "ScienceQA file", DataError)
    if not isinstance(data, kind):
        raise DataError(f"{path}: expected a JSON {kind.__name__} at the top level")
    return data


def extract_answer(text: str) -> str | None:
    """The answer letter LaVIN's eval reads from generated text, or None ("FAILED")."""
    for pattern in (_ANSWER_IS, _BARE_LETTER):
        match = pattern.search(text)
        if match:
            return match.group(1)
    return None


def extract_llava_answer(text: str) -> str | None:
    """The answer letter LLaVA's eval_science_qa.py reads: the whole answer, "X. ...", or "The answer is X."."""
    text = text.strip()
    if len(text) == 1 and text in LETTERS:
        return text
    if len(text) >= 3 and text[0] in LETTERS and text[1:3] == ". ":
        return text[0]
    match = _ANSWER_IS.search(text)
    return match.group(1) if match else None


def predicted_index(text: str, example: ScienceQAExample, seed: int = 0, extract=extract_answer) -> int:
    """Choice index for a generation; unparsable or out-of-range letters get a random choice."""
    letter = extract(text)
    if letter is not None and LETTERS.index(letter) < len(example.choices):
        return LETTERS.index(letter)
    return random.Random(f"sqa-fallback:{seed}:{example.pid}").randrange(len(example.choices))


def score_scienceqa(predictions: Mapping[str, str] | Sequence[str],
                    examples: Sequence[ScienceQAExample], seed: int = 0, extract=extract_answer) -> dict:
    """Accuracy in percent over every question (the official "Average"), broken down into the
    official NAT/SOC/LAN, TXT/IMG/NO, G1-6/G7-12 (eas.data.metrics.task_scores shape).

    `predictions` is either pid -> generated text or a list aligned with `examples`. An empty
    category scores None; each category carries its question count.
    """
    if isinstance(predictions, Mapping):
        missing = [e.pid for e in examples if e.pid not in predictions]
        if missing:
            raise DataError(f"no prediction for ScienceQA pid(s) {missing[:5]}")
        texts = [predictions[e.pid] for e in examples]
    else:
        if len(predictions) != len(examples):
            raise DataError(f"{len(predictions)} predictions for {len(examples)} questions")
        texts = list(predictions)
    hits = dict.fromkeys(CATEGORIES, 0)
    counts = dict.fromkeys(CATEGORIES, 0)
    correct = 0
    for text, example in zip(texts, examples):
        right = predicted_index(text, example, seed, extract) == example.answer_index
        correct += right
        for category in example.categories:
            counts[category] += 1
            hits[category] += right
    return task_scores(correct, len(examples), {c: (hits[c], counts[c]) for c in CATEGORIES},
                       f"answer letter correct ({'LLaVA' if extract is extract_llava_answer else 'LaVIN'}'s "
                       f"extraction, seeded random choice if none)")
