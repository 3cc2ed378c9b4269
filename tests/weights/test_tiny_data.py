"""Pretraining data of the tiny base: determinism, disjoint held-out splits, answers that match the
pixels actually drawn, and the shipped tokenizer (exact round trip, reproducible from its recipe).

Shape answers are checked against the image, not against the scene record that produced them:
shape pixels are the only ones carrying an exact palette RGB (backgrounds are noisy and far from
the palette), so connected components of palette pixels recover the shapes independently.
"""
import platform
from collections import Counter, deque
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from eas.data.aid import AID_PROMPT
from weights import tiny_data as td
from weights.train_tokenizer import RECIPE_PYTHON, train

REPO = Path(__file__).resolve().parents[2]
TOKENIZER = REPO / "weights" / "tiny" / "tokenizer.model"
N = 150
# Drawn width over circumradius: shapes are inscribed in their circle (square sqrt 2, triangle
# sqrt 3, star 2 sin 72 degrees), so the size class is read from width once the kind is known.
WIDTH_PER_RADIUS = {"circle": 2.0, "ring": 2.0, "square": 2 ** 0.5, "triangle": 3 ** 0.5, "star": 1.9}


def test_same_seed_same_bytes_other_seed_other_bytes():
    for split in td.SPLITS:
        a, b = list(td.examples(3, split, N)), list(td.examples(3, split, N))
        assert all(x.image.tobytes() == y.image.tobytes() and (x.prompt, x.answer) == (y.prompt, y.answer)
                   for x, y in zip(a, b))
        assert all(x.image.shape == (64, 64, 3) and x.image.dtype == np.uint8 for x in a)
    other = list(td.examples(4, "train", N))
    assert sum(x.image.tobytes() != y.image.tobytes() for x, y in zip(a, other)) > 0.9 * N
    assert td.example(3, "train", 17).image.tobytes() == list(td.examples(3, "train", 1, start=17))[0].image.tobytes()


def test_every_task_appears_with_answers_from_its_answer_set():
    seen = set()
    for ex in td.examples(0, "train", 400):
        seen.add(ex.task)
        if ex.qtype == "caption":
            assert ex.prompt == td.CAPTION_PROMPT
        else:
            assert ex.answer in td.ANSWER_SETS[ex.qtype], (ex.qtype, ex.answer)
            assert ex.prompt.startswith("Question: ") and ex.prompt.endswith(f"\n{td.SINGLE_WORD}\nResponse:")
    assert seen == {"shapes", "digits", "textures", "photos"}
    assert td.chance_levels()["color"] == (8, 1 / 8) and td.chance_levels()["size"] == (2, 0.5)
    with pytest.raises(ValueError, match="aerial"):
        td.example(0, "train", 0, mix={"aerial": 1.0})


def test_heldout_images_and_layouts_never_in_train():
    train, held = list(td.examples(0, "train", 400)), list(td.examples(0, "heldout", 200))
    assert not {e.image.tobytes() for e in train} & {e.image.tobytes() for e in held}
    train_layouts = {e.scene.layout_key() for e in train if e.scene}
    held_layouts = {e.scene.layout_key() for e in held if e.scene}
    assert held_layouts and not train_layouts & held_layouts
    tr, ho = td.digit_indices("train"), td.digit_indices("heldout")
    assert len(tr) + len(ho) == len(td.load_digits()[1]) and not set(tr) & set(ho)
    bitmaps = td.load_digits()[0]
    assert not {bitmaps[i].tobytes() for i in tr} & {bitmaps[i].tobytes() for i in ho}


def test_heldout_text_documents_never_in_train():
    train, held = td.text_documents("train"), td.text_documents("heldout")
    assert len(held) > 300 and len(train) > 8 * len(held)
    assert not {d.text for d in train} & {d.text for d in held}
    assert sum(len(d.text) for d in train) > 1_000_000


def test_token_blocks_are_full_length_and_cover_the_stream():
    texts = ["abc", "defgh", "", "ij"]
    encode = lambda s: [ord(c) for c in s]  # noqa: E731
    blocks = list(td.token_blocks(texts, encode, block_len=4, bos_id=1, eos_id=2))
    stream = [t for s in texts for t in [1, *encode(s), 2]]
    assert all(b.shape == (4,) and b.dtype == np.int64 for b in blocks)
    assert np.concatenate(blocks).tolist() == stream[: len(blocks) * 4] and len(stream) - 4 * len(blocks) < 4
    shuffled = np.concatenate(list(td.token_blocks(texts, encode, 4, seed=1))).tolist()
    assert len(shuffled) == 4 * len(blocks) and not Counter(shuffled) - Counter(stream)
    assert shuffled == np.concatenate(list(td.token_blocks(texts, encode, 4, seed=1))).tolist()


def _palette_components(image: np.ndarray) -> list[tuple[str, list[tuple[int, int]]]]:
    """8-connected regions of pixels whose RGB is exactly one palette color."""
    names = np.full(image.shape[:2], -1)
    colors = list(td.COLORS)
    for k, rgb in enumerate(td.COLORS.values()):
        names[(image == np.asarray(rgb, dtype=np.uint8)).all(-1)] = k
    seen = np.zeros_like(names, dtype=bool)
    comps = []
    for y0, x0 in zip(*np.nonzero(names >= 0)):
        if seen[y0, x0]:
            continue
        k, pixels, todo = names[y0, x0], [], deque([(y0, x0)])
        seen[y0, x0] = True
        while todo:
            y, x = todo.popleft()
            pixels.append((int(y), int(x)))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    v, u = y + dy, x + dx
                    if 0 <= v < 64 and 0 <= u < 64 and not seen[v, u] and names[v, u] == k:
                        seen[v, u] = True
                        todo.append((v, u))
        comps.append((colors[k], pixels))
    return comps


def _nearest_slot(pixels):
    cy, cx = np.mean(pixels, axis=0)
    return min(td.SLOTS, key=lambda s: (td.SLOTS[s][0] - cx) ** 2 + (td.SLOTS[s][1] - cy) ** 2)


def test_answers_match_the_drawn_pixels():
    checked = set()
    for split in td.SPLITS:
        for i in range(N):
            ex = td.example(5, split, i, mix={"shapes_qa": 1.0})
            comps = _palette_components(ex.image)
            assert len(comps) == len(ex.scene.shapes), (split, i, ex.scene)
            # Each recorded shape is one drawn component: its color, slot and size seen in pixels.
            drawn = {}
            for s in ex.scene.shapes:
                probe = (s.cy, s.cx + s.radius - 1) if s.kind == "ring" else (s.cy, s.cx)
                assert tuple(ex.image[probe]) == td.COLORS[s.color], (s, probe)
                comp = next(p for c, p in comps if probe in p)
                width = max(x for _, x in comp) - min(x for _, x in comp) + 1
                radius = width / WIDTH_PER_RADIUS[s.kind]
                drawn[s] = (_nearest_slot(comp), "large" if radius > 7 else "small")
                assert drawn[s] == (s.slot, s.size), (s, drawn[s])
            q = ex.prompt.split("\n")[0][len("Question: "):]
            words = q.rstrip("?").split()
            if ex.qtype == "count":
                assert ex.answer == td.NUMBERS[len(comps)]
            elif ex.qtype == "color":
                (s,) = [s for s in ex.scene.shapes if s.kind == words[-1]]
                assert td.COLORS[ex.answer] == td.COLORS[s.color]
            elif ex.qtype in ("where", "size"):
                (s,) = [s for s in ex.scene.shapes if (s.color, s.kind) == (words[-2], words[-1])]
                assert ex.answer == drawn[s][0 if ex.qtype == "where" else 1]
            elif ex.qtype == "shape_at":
                slot = next(k for k, p in td.SLOT_PHRASES.items() if q.endswith(p + "?"))
                (s,) = [s for s in ex.scene.shapes if drawn[s][0] == slot]
                assert ex.answer == s.kind
            elif ex.qtype == "count_kind":
                kind = next(k for k, p in td.PLURALS.items() if p == words[2])
                assert ex.answer == td.NUMBERS[sum(s.kind == kind for s in ex.scene.shapes)]
            elif ex.qtype == "background":
                mask = np.ones((64, 64), dtype=bool)
                for _, p in comps:
                    mask[tuple(np.array(p).T)] = False
                mean = ex.image[mask].mean(0)
                nearest = min(td.BACKGROUNDS, key=lambda b: np.sum((np.array(td.BACKGROUNDS[b]) - mean) ** 2))
                assert ex.answer == nearest
            checked.add(ex.qtype)
    assert checked == set(td.ANSWER_SETS) - {"digit", "texture", "photo"}


def test_caption_names_every_drawn_shape():
    for i in range(40):
        ex = td.example(6, "train", i, mix={"shapes_caption": 1.0})
        assert ex.answer.startswith(td.NUMBERS[len(_palette_components(ex.image))] + " shape")
        for s in ex.scene.shapes:
            assert f"a {s.size} {s.color} {s.kind} {td.SLOT_PHRASES[s.slot]}" in ex.answer


def test_texture_and_digit_answers_follow_their_source():
    digits = [td.example(0, "heldout", i, mix={"digits": 1.0}) for i in range(30)]
    assert {e.answer for e in digits} <= set(td.NUMBERS) and len({e.answer for e in digits}) > 5
    textures = [td.example(0, "train", i, mix={"textures": 1.0}) for i in range(30)]
    assert {e.answer for e in textures} == set(td.TEXTURES)
    # Mirrored held-out photo views are never training views.
    photos = [td.example(0, s, i, mix={"photos": 1.0}).image.tobytes() for s in td.SPLITS for i in range(20)]
    assert len(set(photos)) == len(photos)


@pytest.fixture(scope="module")
def sp():
    if not TOKENIZER.exists():
        pytest.skip(f"{TOKENIZER} absent: create it with `python weights/train_tokenizer.py`")
    return spm.SentencePieceProcessor(model_file=str(TOKENIZER))


def test_shipped_tokenizer_ids_and_exact_round_trip(sp):
    assert sp.get_piece_size() == 2000
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert sp.id_to_piece(sp.encode("\n")[-1]) == "\n"
    samples = ["", " ", "  two  spaces ", "\t\ttabs\n\n", "emoji 🚀 中文 ünïcödé", "Image: N/A",
               AID_PROMPT + " storagetanks", *td.task_text_lines(n_captions=20)]
    samples += [d.text for d in td.text_documents("heldout")[:200]]
    for s in samples:
        assert sp.decode(sp.encode(s)) == s, repr(s)
    # Words after a newline must not be spelled from fragments (see training_sentences()).
    assert len(sp.encode("\nResponse:")) <= 4


def test_shipped_tokenizer_is_what_the_recipe_trains(sp, tmp_path):
    if platform.python_version() != RECIPE_PYTHON:
        pytest.skip(f"the stdlib docstrings it trains on are Python {RECIPE_PYTHON}'s; this is "
                    f"{platform.python_version()}")
    train(tmp_path / "tokenizer.model")
    assert (tmp_path / "tokenizer.model").read_bytes() == TOKENIZER.read_bytes()
