"""Deterministic pretraining data for the tiny LaVIN-style base: offline text and 64-px image tasks.

Everything here is built from material that ships with Python or with pip wheels (CPython's
docstrings and `pydoc_data.topics`; scikit-learn's digits; scikit-image's textures and photos)
and from procedurally drawn shape scenes, so the recipe runs offline and reproduces from one seed.
None of the images is an aerial or remote-sensing scene: the downstream AID-like task must be a
transfer to unseen kinds of images and labels. Every example is a pure function of
(seed, split, index), so data loaders can be sharded or resumed without drift.

Held-out splits are disjoint by construction, not by chance:
  text      identical documents are merged, then a hash of the text picks the split;
  shapes    a hash of the scene's layout (kinds, colors, sizes, slots, background) picks the
            split, so held-out scenes are combinations never drawn in training;
  digits    a hash of the 8x8 bitmap picks the split;
  textures  training crops come from the top 3/4 of each texture, held-out crops from the bottom;
  photos    only 8 photos ship, so held-out views are mirror images of crops (never shown in
            training); accuracy there measures view invariance, not recognition of new objects.
"""
from __future__ import annotations

import ast
import gzip
import hashlib
import importlib.util
import math
import sysconfig
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image, ImageDraw

from eas.data.aid import AID_LABELS, AID_PROMPT

IMAGE_SIZE = 64
SPLITS = {"train": 0, "heldout": 1}
HELDOUT_PERCENT = 10

# The single-word instruction is the downstream one (the middle line of AID's prompt), so
# pretraining prompts have the same shape.
SINGLE_WORD = AID_PROMPT.split("\n")[1]


def qa_prompt(question: str) -> str:
    return f"Question: {question}\n{SINGLE_WORD}\nResponse:"


CAPTION_PROMPT = "Question: Describe the image.\nResponse:"


def _split_of(key: bytes) -> str:
    # blake2b, not hash(): Python salts str hashes per process, which would reshuffle splits.
    h = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
    return "heldout" if h % 100 < HELDOUT_PERCENT else "train"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {sorted(SPLITS)}")


# ----------------------------------------------------------------------------------------- text

@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str


def stdlib_files() -> list[Path]:
    """CPython's own modules in sorted order; test suites are left out (fixtures, not prose)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idle_test"}
    return sorted(p for p in root.rglob("*.py") if not skip.intersection(p.relative_to(root).parts))


def _docstrings(tree: ast.AST, prefix: str) -> Iterator[tuple[str, str]]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            name = f"{prefix}.{node.name}"
            doc = ast.get_docstring(node)
            if doc:
                yield name, doc
            yield from _docstrings(node, name)


def stdlib_docstrings(files: Iterable[Path] | None = None) -> list[Document]:
    """Module, class and function docstrings, in file order and then source order."""
    docs = []
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in stdlib_files() if files is None else files:
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()
        try:
            with warnings.catch_warnings():  # old escape sequences in strings are not our concern
                warnings.simplefilter("ignore")
                tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue  # a few stdlib files are deliberately not valid for this parser version
        module_doc = ast.get_docstring(tree)
        if module_doc:
            docs.append(Document(rel, module_doc))
        docs.extend(Document(f"{rel}:{name}", doc) for name, doc in _docstrings(tree, ""))
    return docs


def pydoc_topics() -> list[Document]:
    from pydoc_data.topics import topics
    return [Document(f"pydoc_data.topics:{key}", topics[key]) for key in sorted(topics)]


@lru_cache(maxsize=1)
def _all_documents() -> tuple[Document, ...]:
    seen, unique = set(), []
    for doc in pydoc_topics() + stdlib_docstrings():
        if doc.text not in seen:  # docstrings copied between modules would count twice
            seen.add(doc.text)
            unique.append(doc)
    return tuple(unique)


def text_documents(split: str) -> list[Document]:
    """The offline text corpus (≈2.2M characters in Python 3.11), deduplicated and split ~90/10.

    Takes a few seconds the first time (parses the stdlib); later calls are cached. The corpus
    is a function of the Python version, which a model card should state.
    """
    _check_split(split)
    return [d for d in _all_documents() if _split_of(d.text.encode("utf-8", "surrogatepass")) == split]


def token_blocks(texts: Iterable[str], encode: Callable[[str], list[int]], block_len: int,
                 bos_id: int = 1, eos_id: int = 2, seed: int | None = None) -> Iterator[np.ndarray]:
    """Fixed-length int64 blocks from BOS + encode(text) + EOS for each text, concatenated.

    `seed` shuffles the document order first (one permutation per seed); the ragged tail is
    dropped so every block has exactly `block_len` tokens.
    """
    texts = list(texts)
    order = range(len(texts)) if seed is None else np.random.default_rng(seed).permutation(len(texts))
    buf: list[int] = []
    for i in order:
        buf.append(bos_id)
        buf.extend(encode(texts[i]))
        buf.append(eos_id)
        while len(buf) >= block_len:
            yield np.asarray(buf[:block_len], dtype=np.int64)
            del buf[:block_len]


# ------------------------------------------------------------------------------- shape scenes

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
          "yellow": (240, 220, 40), "orange": (245, 140, 20), "purple": (140, 60, 190),
          "white": (245, 245, 245), "black": (20, 20, 20)}
# Muted backgrounds, far (in RGB) from every shape color so the answer is never ambiguous.
BACKGROUNDS = {"gray": (128, 128, 128), "beige": (200, 190, 160), "brown": (110, 80, 50),
               "pink": (240, 180, 190)}
SHAPES = ("circle", "square", "triangle", "star", "ring")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
           "ring": "rings"}
# Slot centres 21 px apart; a shape never leaves the 9-px disc around its slot (radius + jitter
# <= 9), so neighbours stay 2 px apart and "on the left" always names exactly one shape.
SLOTS = {"top": (32, 11), "left": (11, 32), "center": (32, 32), "right": (53, 32), "bottom": (32, 53)}
SLOT_PHRASES = {"top": "at the top", "left": "on the left", "center": "in the center",
                "right": "on the right", "bottom": "at the bottom"}
SLOT_REACH = 9
# About 2x apart in radius. Shapes are inscribed in their circle, so "large" is relative to the
# kind: a large square is about as wide as a small circle.
SIZES = {"small": (4, 5), "large": (8, 9)}
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class Shape:
    kind: str
    color: str
    size: str
    slot: str
    cx: int
    cy: int
    radius: int  # circumradius: every drawn pixel lies within it


@dataclass(frozen=True)
class Scene:
    background: str
    shapes: tuple[Shape, ...]  # in SLOTS order (reading order), which captions follow

    def layout_key(self) -> bytes:
        """What the held-out split is decided on: the layout without jitter or noise."""
        parts = [self.background] + [f"{s.slot}:{s.size}:{s.color}:{s.kind}" for s in self.shapes]
        return "|".join(parts).encode()


def sample_scene(rng: np.random.Generator) -> Scene:
    n = int(rng.integers(1, 5))
    slots = sorted(rng.choice(len(SLOTS), size=n, replace=False))
    shapes = []
    for slot_index in slots:
        slot = list(SLOTS)[slot_index]
        size = ("small", "large")[int(rng.integers(2))]
        radius = int(rng.choice(SIZES[size]))
        jitter = SLOT_REACH - radius
        dx, dy = (int(v) for v in rng.integers(-jitter, jitter + 1, size=2))
        while dx * dx + dy * dy > jitter * jitter:  # keep the centre inside the jitter disc
            dx, dy = (int(v) for v in rng.integers(-jitter, jitter + 1, size=2))
        x, y = SLOTS[slot]
        shapes.append(Shape(SHAPES[int(rng.integers(len(SHAPES)))],
                            list(COLORS)[int(rng.integers(len(COLORS)))],
                            size, slot, x + dx, y + dy, radius))
    return Scene(list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))], tuple(shapes))


def _polygon(cx: int, cy: int, radius: float, n_points: int, inner: float | None = None,
             start_deg: float = -90.0) -> list[tuple[float, float]]:
    pts = []
    step = 360.0 / n_points
    for i in range(n_points):
        a = math.radians(start_deg + i * step)
        pts.append((cx + radius * math.cos(a), cy + radius * math.sin(a)))
        if inner is not None:
            b = math.radians(start_deg + (i + 0.5) * step)
            pts.append((cx + inner * radius * math.cos(b), cy + inner * radius * math.sin(b)))
    return pts


def ring_width(radius: int) -> int:
    return max(2, round(0.4 * radius))


def _background(rng: np.random.Generator, rgb: tuple[int, int, int]) -> np.ndarray:
    # A gentle gradient and pixel noise so the encoder cannot key on a flat fill value.
    s = IMAGE_SIZE
    gx, gy = rng.uniform(-12, 12, size=2)
    ramp = (np.arange(s) / (s - 1) - 0.5)
    field = gx * ramp[None, :] + gy * ramp[:, None]
    noise = rng.integers(-6, 7, size=(s, s, 3))
    return np.clip(np.asarray(rgb)[None, None, :] + field[:, :, None] + noise, 0, 255).astype(np.uint8)


def render_scene(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Solid, non-antialiased shapes, so a pixel inside a shape has exactly its RGB color."""
    img = Image.fromarray(_background(rng, BACKGROUNDS[scene.background]))
    draw = ImageDraw.Draw(img)
    for s in scene.shapes:
        fill = COLORS[s.color]
        r, box = s.radius, (s.cx - s.radius, s.cy - s.radius, s.cx + s.radius, s.cy + s.radius)
        if s.kind == "circle":
            draw.ellipse(box, fill=fill)
        elif s.kind == "ring":
            draw.ellipse(box, outline=fill, width=ring_width(r))
        elif s.kind == "square":
            h = r / math.sqrt(2)
            draw.rectangle((round(s.cx - h), round(s.cy - h), round(s.cx + h), round(s.cy + h)), fill=fill)
        elif s.kind == "triangle":
            draw.polygon(_polygon(s.cx, s.cy, r, 3), fill=fill)
        else:
            draw.polygon(_polygon(s.cx, s.cy, r, 5, inner=0.45), fill=fill)
    return np.asarray(img)


def scene_caption(scene: Scene) -> str:
    n = len(scene.shapes)
    parts = [f"a {s.size} {s.color} {s.kind} {SLOT_PHRASES[s.slot]}" for s in scene.shapes]
    listed = parts[0] if n == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    noun = "shape" if n == 1 else "shapes"
    return f"{NUMBERS[n]} {noun} on a {scene.background} background: {listed}."


def scene_questions(scene: Scene, rng: np.random.Generator) -> dict[str, tuple[str, str]]:
    """One (question, answer) per question type that this scene can answer unambiguously."""
    shapes = scene.shapes
    kinds = [s.kind for s in shapes]
    pairs = [(s.color, s.kind) for s in shapes]
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    qs = {"count": ("How many shapes are there?", NUMBERS[len(shapes)])}
    # Draw the count first, uniformly over the counts this scene offers, then a kind with it:
    # drawing the kind first would make "zero" (or "one") the answer most of the time.
    by_count: dict[int, list[str]] = {}
    for k in SHAPES:
        by_count.setdefault(kinds.count(k), []).append(k)
    kind = pick(by_count[pick(sorted(by_count))])
    qs["count_kind"] = (f"How many {PLURALS[kind]} are there?", NUMBERS[kinds.count(kind)])
    unique_kind = [s for s in shapes if kinds.count(s.kind) == 1]
    if unique_kind:
        s = pick(unique_kind)
        qs["color"] = (f"What color is the {s.kind}?", s.color)
    s = pick(shapes)
    qs["shape_at"] = (f"What shape is {SLOT_PHRASES[s.slot]}?", s.kind)
    unique_pair = [s for s in shapes if pairs.count((s.color, s.kind)) == 1]
    if unique_pair:
        s = pick(unique_pair)
        qs["where"] = (f"Where is the {s.color} {s.kind}?", s.slot)
        s = pick(unique_pair)
        qs["size"] = (f"What size is the {s.color} {s.kind}?", s.size)
    qs["background"] = ("What color is the background?", scene.background)
    return qs


# --------------------------------------------------------------------- images shipped in wheels

def _package_dir(name: str, pip_name: str) -> Path:
    # find_spec locates the wheel without importing it (scikit-learn's import alone costs ~1 s).
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name!r} not found: `pip install {pip_name}` provides the "
                                f"images the tiny-base recipe uses")
    return Path(spec.submodule_search_locations[0])


@lru_cache(maxsize=1)
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten digits: (N, 8, 8) values 0..16 and (N,) labels."""
    path = _package_dir("sklearn", "scikit-learn") / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8).astype(np.uint8), table[:, -1].astype(np.int64)


@lru_cache(maxsize=None)
def digit_indices(split: str) -> np.ndarray:
    _check_split(split)
    bitmaps, _ = load_digits()
    return np.array([i for i, b in enumerate(bitmaps) if _split_of(b.tobytes()) == split])


TEXTURES = ("brick", "grass", "gravel")
PHOTOS = {"astronaut": ("skimage", "astronaut.png"), "cat": ("skimage", "chelsea.png"),
          "coffee": ("skimage", "coffee.png"), "coins": ("skimage", "coins.png"),
          "moon": ("skimage", "moon.png"), "motorcycle": ("skimage", "motorcycle_left.png"),
          "rocket": ("skimage", "rocket.jpg"), "flower": ("sklearn", "flower.jpg")}


@lru_cache(maxsize=None)
def load_bundled_image(package: str, filename: str) -> np.ndarray:
    """An image shipped inside a wheel, as uint8 HxWx3."""
    if package == "skimage":
        path = _package_dir("skimage", "scikit-image") / "data" / filename
    else:
        path = _package_dir("sklearn", "scikit-learn") / "datasets" / "images" / filename
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _crop_resize(img: np.ndarray, rng: np.random.Generator, min_frac: float, max_frac: float,
                 rows: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """A random square crop whose rows lie within the `rows` fraction band, resized to 64 px."""
    h, w = img.shape[:2]
    top, bottom = int(rows[0] * h), int(rows[1] * h)
    side = int(rng.uniform(min_frac, max_frac) * min(h, w))
    side = min(side, bottom - top, w)
    y = int(rng.integers(top, bottom - side + 1))
    x = int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(img[y:y + side, x:x + side])
    return np.asarray(crop.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR))


# ------------------------------------------------------------------------------------ examples

# Every single-word question type and the answers it can have; captions are free text.
ANSWER_SETS: dict[str, tuple[str, ...]] = {
    "count": NUMBERS[1:5], "count_kind": NUMBERS[0:5], "color": tuple(COLORS), "shape_at": SHAPES,
    "where": tuple(SLOTS), "size": tuple(SIZES), "background": tuple(BACKGROUNDS),
    "digit": NUMBERS, "texture": TEXTURES, "photo": tuple(PHOTOS),
}


@dataclass(frozen=True)
class Example:
    image: np.ndarray  # uint8 (64, 64, 3)
    prompt: str
    answer: str
    task: str          # shapes | digits | textures | photos
    qtype: str         # a key of ANSWER_SETS, or "caption"
    scene: Scene | None = None


def shapes_example(rng: np.random.Generator, split: str, caption: bool = False) -> Example:
    scene = sample_scene(rng)
    while _split_of(scene.layout_key()) != split:
        scene = sample_scene(rng)
    image = render_scene(scene, rng)
    if caption:
        return Example(image, CAPTION_PROMPT, scene_caption(scene), "shapes", "caption", scene)
    qs = scene_questions(scene, rng)
    qtype = sorted(qs)[int(rng.integers(len(qs)))]
    question, answer = qs[qtype]
    return Example(image, qa_prompt(question), answer, "shapes", qtype, scene)


def _two_contrasting_colors(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    palette = list(COLORS.values()) + list(BACKGROUNDS.values())
    while True:
        a, b = (np.asarray(palette[int(i)], dtype=np.float32) for i in rng.choice(len(palette), 2, replace=False))
        luma = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        if abs(float(luma @ (a - b))) > 70:  # faint ink would make some digits unreadable
            return a, b


def digits_example(rng: np.random.Generator, split: str) -> Example:
    bitmaps, labels = load_digits()
    pool = digit_indices(split)
    i = int(pool[int(rng.integers(len(pool)))])
    side = int(rng.integers(36, 61))
    ink_level = np.round(bitmaps[i].astype(np.float32) * (255.0 / 16.0)).astype(np.uint8)
    alpha = Image.fromarray(ink_level).resize((side, side), Image.BILINEAR)
    alpha = np.asarray(alpha, dtype=np.float32)[:, :, None] / 255.0
    ink, paper = _two_contrasting_colors(rng)
    image = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    image[:] = paper
    y, x = (int(v) for v in rng.integers(0, IMAGE_SIZE - side + 1, size=2))
    image[y:y + side, x:x + side] = paper * (1 - alpha) + ink * alpha
    image += rng.normal(0, 4, size=image.shape)
    return Example(np.clip(image, 0, 255).astype(np.uint8), qa_prompt("What digit is this?"),
                   NUMBERS[int(labels[i])], "digits", "digit")


def textures_example(rng: np.random.Generator, split: str) -> Example:
    name = TEXTURES[int(rng.integers(len(TEXTURES)))]
    rows = (0.0, 0.75) if split == "train" else (0.75, 1.0)
    crop = _crop_resize(load_bundled_image("skimage", f"{name}.png"), rng, 0.1, 0.25, rows)
    crop = np.rot90(crop, int(rng.integers(4)))
    gain = rng.uniform(0.75, 1.25)
    image = np.clip(crop.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    return Example(np.ascontiguousarray(image), qa_prompt("What texture is this?"), name, "textures", "texture")


def photos_example(rng: np.random.Generator, split: str) -> Example:
    label = list(PHOTOS)[int(rng.integers(len(PHOTOS)))]
    crop = _crop_resize(load_bundled_image(*PHOTOS[label]), rng, 0.6, 1.0)
    if split == "heldout":
        crop = crop[:, ::-1]
    return Example(np.ascontiguousarray(crop), qa_prompt("What is in the image?"), label, "photos", "photo")


def shapes_caption_example(rng: np.random.Generator, split: str) -> Example:
    return shapes_example(rng, split, caption=True)


TASKS: dict[str, Callable[[np.random.Generator, str], Example]] = {
    "shapes_qa": shapes_example, "shapes_caption": shapes_caption_example, "digits": digits_example,
    "textures": textures_example, "photos": photos_example}
TASK_MIX = {"shapes_qa": 0.50, "shapes_caption": 0.15, "digits": 0.20, "textures": 0.10, "photos": 0.05}


def example(seed: int, split: str, index: int, mix: dict[str, float] | None = None) -> Example:
    """Example `index` of the (seed, split) stream: a pure function of its arguments."""
    _check_split(split)
    mix = TASK_MIX if mix is None else mix
    if unknown := sorted(set(mix) - set(TASKS)):
        raise ValueError(f"tasks {unknown} in mix: expected names from {sorted(TASKS)}")
    rng = np.random.default_rng([seed, SPLITS[split], index])
    names = list(mix)
    p = np.asarray([mix[n] for n in names], dtype=np.float64)
    task = names[int(rng.choice(len(names), p=p / p.sum()))]
    return TASKS[task](rng, split)


def examples(seed: int, split: str, n: int, start: int = 0,
             mix: dict[str, float] | None = None) -> Iterator[Example]:
    """Examples start .. start+n-1 of the (seed, split) stream."""
    for i in range(start, start + n):
        yield example(seed, split, i, mix)


def chance_levels() -> dict[str, tuple[int, float]]:
    """Per question type: (number of possible answers, accuracy of a uniform guess)."""
    return {q: (len(a), 1.0 / len(a)) for q, a in ANSWER_SETS.items()}


def majority_rates(sample: Iterable[Example]) -> dict[str, tuple[str, float]]:
    """Per question type: the most frequent answer in `sample` and the accuracy of always giving
    it, the baseline a model must beat when answers are not uniform (e.g. count_kind)."""
    by_type: dict[str, dict[str, int]] = {}
    for ex in sample:
        if ex.qtype != "caption":
            counts = by_type.setdefault(ex.qtype, {})
            counts[ex.answer] = counts.get(ex.answer, 0) + 1
    return {q: (max(c, key=c.get), max(c.values()) / sum(c.values())) for q, c in sorted(by_type.items())}


def task_text_lines(seed: int = 0, n_captions: int = 2000) -> list[str]:
    """Every prompt and answer string the image tasks can produce (captions sampled), plus the
    downstream prompt pieces, so the tokenizer learns them as few pieces."""
    # The downstream labels as text only (the tokenizer must spell them); no AID-like image is
    # drawn anywhere in this file.
    lines = ["Image: ", "Image: N/A", CAPTION_PROMPT, AID_PROMPT]
    lines += [f"{AID_PROMPT} {label}" for label in AID_LABELS]
    for answers in ANSWER_SETS.values():
        lines += list(answers)
    questions = ["How many shapes are there?", "What color is the background?", "What digit is this?",
                 "What texture is this?", "What is in the image?"]
    questions += [f"How many {PLURALS[k]} are there?" for k in SHAPES]
    questions += [f"What color is the {k}?" for k in SHAPES]
    questions += [f"What shape is {p}?" for p in SLOT_PHRASES.values()]
    questions += [f"{w} is the {c} {k}?" for w in ("Where", "What size") for c in COLORS for k in SHAPES]
    lines += [qa_prompt(q) for q in questions]
    rng = np.random.default_rng([seed, 7])
    lines += [scene_caption(sample_scene(rng)) for _ in range(n_captions)]
    return lines
