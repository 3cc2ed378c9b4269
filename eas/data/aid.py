"""AID (Aerial Image Dataset, Xia et al. 2017): scan, paper splits, prompt and scoring.

On disk: `<root>/<ClassDir>/<label>_<n>.jpg`, 30 class folders, 10,000 images. The label is the
folder name lower-cased (`StorageTanks/storagetanks_12.jpg` -> "storagetanks"). The paper's
"20 %" and "50 %" settings train on that fraction of the images and test on the rest; AID has no
validation split, so one is carved from the train part for the search reward (eas_method.md §4.2).
"""
from __future__ import annotations

import math
import random
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from eas.data import DataWarning
from eas.data.metrics import normalize_answer, task_scores
from eas.data.prompt import PromptFormat
from eas.errors import DataError

AID_CLASS_DIRS = (
    "Airport", "BareLand", "BaseballField", "Beach", "Bridge", "Center", "Church", "Commercial",
    "DenseResidential", "Desert", "Farmland", "Forest", "Industrial", "Meadow",
    "MediumResidential", "Mountain", "Park", "Parking", "Playground", "Pond", "Port",
    "RailwayStation", "Resort", "River", "School", "SparseResidential", "Square", "Stadium",
    "StorageTanks", "Viaduct",
)
AID_LABELS = tuple(d.lower() for d in AID_CLASS_DIRS)
AID_FORMAT = PromptFormat("aid", "Question: {question}\nAnswer the question using a single word.\nResponse:",
                          question="What is the label for this image?", max_new_tokens=10,
                          answer="one word: the scene's class label (e.g. beach)")
AID_PROMPT = AID_FORMAT.fill(AID_FORMAT.question)
# LLaVA-EAS's AID question (eas_method.md §4.2), the user's message of a vicuna_v1 conversation.
AID_LLAVA_FORMAT = PromptFormat("aid", "{question}\nAnswer the question using a single word.",
                                question=AID_FORMAT.question, max_new_tokens=10, answer=AID_FORMAT.answer)
PAPER_TRAIN_FRACTIONS = {"20": 0.2, "50": 0.5}
# A file that marks a generated stand-in (eas.data.synthetic_aid); it travels with the folder so
# that a synthetic set is recognised, and announced, wherever it is scanned from.
SYNTHETIC_MARKER = "SYNTHETIC_AID.json"
_FILE_NAME = re.compile(r"^([a-z]+)_(\d+)\.jpe?g$", re.IGNORECASE)


@dataclass(frozen=True)
class AidExample:
    image: Path
    target: str  # the class label, which is the whole answer
    index: int  # the <n> of the file name
    prompt: str = AID_PROMPT


@dataclass
class AidScan:
    root: Path
    examples: list[AidExample]
    warnings: list[str] = field(default_factory=list)
    synthetic: bool = False


def scan_aid(root: str | Path, require_all_classes: bool = True) -> AidScan:
    """List the images under an AID root without decoding them.

    Bad layout (no root, no class folders, an unknown folder, a missing class) is an error naming
    the path; stray files are skipped with a warning. Corrupt images surface when they are read
    (`eas.data.tasks.load_pixels`), since decoding 10,000 files just to list them is too slow.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"AID root {root} does not exist or is not a folder")
    notes: list[str] = []
    folders = _class_folders(root, notes)
    examples: list[AidExample] = []
    for label, folder in folders.items():
        found = _class_images(folder, label, notes)
        if not found and require_all_classes:
            raise DataError(f"AID class folder {folder} holds no {label}_<n>.jpg images")
        examples += found
    missing = [d for d, label in zip(AID_CLASS_DIRS, AID_LABELS) if label not in folders]
    if missing and require_all_classes:
        raise DataError(f"AID root {root} lacks class folder(s) {', '.join(missing)}")
    if notes:
        shown = "; ".join(notes[:3]) + ("; ..." if len(notes) > 3 else "")
        warnings.warn(f"AID scan of {root}: skipped {len(notes)} entries: {shown}", DataWarning,
                      stacklevel=2)
    examples.sort(key=_order)
    return AidScan(root, examples, notes, (root / SYNTHETIC_MARKER).is_file())


def _class_folders(root: Path, notes: list[str]) -> dict[str, Path]:
    """label -> class folder, in AID_LABELS order; stray entries are appended to `notes`."""
    expected = ", ".join(AID_CLASS_DIRS)
    folders: dict[str, Path] = {}
    for entry in sorted(root.iterdir()):
        if entry.name == SYNTHETIC_MARKER:
            continue
        if entry.name.startswith(".") or not entry.is_dir():
            notes.append(f"stray entry {entry} (not a class folder)")
            continue
        label = entry.name.lower()
        if label not in AID_LABELS:
            raise DataError(f"AID root {root}: unknown class folder '{entry.name}'; expected "
                            f"the 30 folders {expected} (is {root} the folder that holds them?)")
        if label in folders:
            raise DataError(f"AID root {root}: folders '{folders[label].name}' and "
                            f"'{entry.name}' both hold class '{label}'")
        folders[label] = entry
    if not folders:
        raise DataError(f"AID root {root} holds no class folders; expected {expected}")
    return {label: folders[label] for label in AID_LABELS if label in folders}


def _class_images(folder: Path, label: str, notes: list[str]) -> list[AidExample]:
    """The <label>_<n>.jpg files of one class folder; anything else is appended to `notes`."""
    found = []
    for path in sorted(folder.iterdir()):
        match = _FILE_NAME.match(path.name)
        if not path.is_file() or match is None or match.group(1).lower() != label:
            notes.append(f"stray entry {path} (expected {label}_<n>.jpg)")
            continue
        found.append(AidExample(path, label, int(match.group(2))))
    return found


@dataclass(frozen=True)
class AidSplit:
    train: list[AidExample]  # what the weights are tuned on (the val slice removed)
    val: list[AidExample]    # held out of tuning, scored by the search reward
    test: list[AidExample]   # the paper's test part, never seen by search or tuning


def split_aid(examples: Sequence[AidExample], train_fraction: float, seed: int = 0,
              val_fraction: float = 0.1) -> AidSplit:
    """Class-stratified, seeded, disjoint train/val/test split.

    The train part holds round(train_fraction * N) images in all, spread over classes by largest
    remainder, with at least one train and one test image per class; the val slice is
    `val_fraction` of it, at least one per class (when val_fraction > 0). Each class is shuffled
    by its own seeded generator, so the 20 % train part is a subset of the 50 % one and the test
    part does not depend on val_fraction.
    """
    if not 0.0 < train_fraction < 1.0:
        raise DataError(f"train_fraction must lie in (0, 1), got {train_fraction}")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    by_class: dict[str, list[AidExample]] = {}
    for e in sorted(examples, key=_order):
        by_class.setdefault(e.target, []).append(e)
    small = [label for label, items in by_class.items() if len(items) < (3 if val_fraction else 2)]
    if small:
        raise DataError(f"AID classes {small} have too few images to give every part one")

    sizes = {label: len(items) for label, items in by_class.items()}
    # Two train images per class at least when a val image must still leave one to tune on.
    n_train = _stratified_counts(sizes, train_fraction, low=2 if val_fraction else 1, high_gap=1)
    n_val = (_stratified_counts(n_train, val_fraction, low=1, high_gap=1) if val_fraction
             else dict.fromkeys(n_train, 0))
    train, val, test = [], [], []
    for label, items in by_class.items():
        order = list(items)
        random.Random(f"aid-split:{seed}:{label}").shuffle(order)
        part = order[:n_train[label]]
        test += order[n_train[label]:]
        random.Random(f"aid-val:{seed}:{label}").shuffle(part)
        val += part[:n_val[label]]
        train += part[n_val[label]:]
    return AidSplit(sorted(train, key=_order), sorted(val, key=_order), sorted(test, key=_order))


def paper_split(examples: Sequence[AidExample], setting: str, seed: int = 0,
                val_fraction: float = 0.1) -> AidSplit:
    """The paper's "20" or "50" (% train) setting."""
    setting = setting.rstrip("%")
    if setting not in PAPER_TRAIN_FRACTIONS:
        raise DataError(f"unknown AID setting {setting!r}; expected one of "
                        f"{sorted(PAPER_TRAIN_FRACTIONS)}")
    return split_aid(examples, PAPER_TRAIN_FRACTIONS[setting], seed, val_fraction)


def _order(e: AidExample) -> tuple:
    return AID_LABELS.index(e.target), e.index, e.image.name


def _stratified_counts(sizes: dict[str, int], fraction: float, low: int,
                       high_gap: int) -> dict[str, int]:
    """Per-class counts near fraction * size, each in [low, size - high_gap], summing to the
    rounded overall target (largest remainder), so the totals match the paper's 2,000 / 5,000."""
    ideal = {c: fraction * n for c, n in sizes.items()}
    high = {c: n - high_gap for c, n in sizes.items()}
    counts = {c: min(max(math.floor(ideal[c]), low), high[c]) for c in sizes}
    target = math.floor(fraction * sum(sizes.values()) + 0.5)
    target = min(max(target, sum(min(low, high[c]) for c in sizes)), sum(high.values()))
    order = list(sizes)  # ties go to the earlier class, deterministically
    while sum(counts.values()) < target:
        c = max((c for c in order if counts[c] < high[c]), key=lambda c: ideal[c] - counts[c])
        counts[c] += 1
    while sum(counts.values()) > target:
        c = min((c for c in order if counts[c] > low), key=lambda c: ideal[c] - counts[c])
        counts[c] -= 1
    return counts


def score_aid(predictions: Sequence[str], examples: Sequence[AidExample]) -> dict:
    """Exact match of the normalised single word: accuracy in percent, broken down per class
    (eas.data.metrics.task_scores shape)."""
    if len(predictions) != len(examples):
        raise DataError(f"{len(predictions)} predictions for {len(examples)} AID examples")
    hits: Counter = Counter()
    totals: Counter = Counter()
    for prediction, example in zip(predictions, examples):
        totals[example.target] += 1
        hits[example.target] += normalize_answer(prediction) == normalize_answer(example.target)
    per_class = {label: (hits[label], totals[label]) for label in AID_LABELS if totals[label]}
    return task_scores(sum(hits.values()), len(examples), per_class,
                       "exact match of the normalised class label")
