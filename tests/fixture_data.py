"""Writers of tiny task data sets in their real on-disk formats, shared by test_data and test_tune.

ScienceQA: `problems.json` (pid -> problem), `pid_splits.json` (split -> [pid]) and images at
`images/<problem split>/<pid>/<image>`. Slake: `<split>.json` lists of questions and images at
`imgs/<img_name>`.
"""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image


def jpeg(path: Path, colour=(100, 150, 200), size=8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path, "JPEG")
    return path


def sqa_problem(question, choices, answer, hint, image, grade, subject, lecture="L.", solution="S.",
                split="test") -> dict:
    return {"question": question, "choices": choices, "answer": answer, "hint": hint,
            "image": image, "task": "closed choice", "grade": grade, "subject": subject,
            "lecture": lecture, "solution": solution, "split": split}


def write_scienceqa(root: Path, problems: dict[str, dict], splits: dict[str, list[str]], size=4) -> Path:
    """problems.json, pid_splits.json and an image file for every problem that names one."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "problems.json").write_text(json.dumps(problems))
    (root / "pid_splits.json").write_text(json.dumps(splits))
    for pid, p in problems.items():
        if p["image"]:
            path = root / "images" / p["split"] / pid / p["image"]
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (size, size), (int(pid) * 37 % 256, 90, 160)).save(path)
    return root


def slake_entry(qid, question, answer, answer_type, lang="en", img="xmlab1/source.jpg") -> dict:
    return {"img_id": 1, "img_name": img, "question": question, "answer": answer,
            "q_lang": lang, "location": "Lung", "modality": "CT", "answer_type": answer_type,
            "base_type": "vqa", "content_type": "Organ", "triple": ["vhead", "_", "_"],
            "qid": qid}


def write_slake(root: Path, splits: dict[str, list[dict]]) -> Path:
    """<split>.json for each given split ("train", "validate", "test") and every image they name."""
    root.mkdir(parents=True, exist_ok=True)
    for split, entries in splits.items():
        (root / f"{split}.json").write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
        for i, e in enumerate(entries):
            if not (root / "imgs" / e["img_name"]).is_file():
                jpeg(root / "imgs" / e["img_name"], (40 * i % 256, 120, 80))
    return root
