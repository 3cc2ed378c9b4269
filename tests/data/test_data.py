"""Task-data layer: AID scan/splits, synthetic AID, ScienceQA and Slake loaders and metrics.

Every fixture is written here in the data set's real on-disk format; expected scores are worked
out by hand in the comments next to them.
"""
import io
import json
import math
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eas.data import DataWarning, synthetic_aid
from eas.data.aid import (AID_CLASS_DIRS, AID_LABELS, AID_PROMPT, SYNTHETIC_MARKER, AidExample,
                          paper_split, scan_aid, score_aid, split_aid)
from eas.data.metrics import (bleu1, contains_answer, exact_match, normalize_answer, token_f1)
from eas.data.scienceqa import (build_prompt, extract_answer, load_scienceqa, predicted_index,
                                score_scienceqa)
from eas.data.slake import load_slake, score_slake
from eas.data.synthetic_aid import SYNTHETIC_NOTICE, ensure_synthetic_aid, render
from eas.data.tasks import load_pixels, load_task
from eas.errors import DataError
from eas.model.image import IMAGENET_MEAN, IMAGENET_STD
from fixture_data import jpeg as _jpeg, slake_entry as _slake_entry, sqa_problem as _problem
from fixture_data import write_scienceqa, write_slake

# Image counts of the real AID classes (they sum to 10,000).
AID_SIZES = (360, 310, 220, 400, 360, 260, 240, 350, 410, 300, 370, 250, 390, 280, 290, 340, 350,
             390, 370, 420, 380, 260, 290, 410, 300, 300, 330, 290, 360, 420)


def _fake_aid(root, per_class=lambda i: 8 + i % 3):
    for i, (d, label) in enumerate(zip(AID_CLASS_DIRS, AID_LABELS)):
        for n in range(1, per_class(i) + 1):
            _jpeg(root / d / f"{label}_{n}.jpg", (i * 8, n * 20, 90))
    return root


# -- AID ----------------------------------------------------------------------------------------

@pytest.fixture
def aid_root(tmp_path):
    root = _fake_aid(tmp_path / "AID")
    (root / "Airport" / "airport_99.jpg").write_bytes(b"this is not a jpeg")  # corrupt
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "JPEG")
    (root / "Beach" / "beach_98.jpg").write_bytes(buf.getvalue()[:200])  # truncated
    (root / "Airport" / "Thumbs.db").write_bytes(b"x")
    (root / "Beach" / "beach_copy.jpg").write_bytes(b"x")
    (root / "readme.txt").write_text("stray")
    return root


def test_aid_scan_counts_labels_and_stray_warnings(aid_root):
    with pytest.warns(DataWarning, match="skipped 3 entries"):
        scan = scan_aid(aid_root)
    assert not scan.synthetic
    counts = Counter(e.target for e in scan.examples)
    assert list(counts) == list(AID_LABELS)
    assert counts["airport"] == 8 + 1 and counts["beach"] == 8 + 1  # + the corrupt files
    assert sum(counts.values()) == sum(8 + i % 3 for i in range(30)) + 2
    assert len(scan.warnings) == 3 and any("Thumbs.db" in w for w in scan.warnings)
    e = scan.examples[0]
    assert (e.target, e.index, e.image.name) == ("airport", 1, "airport_1.jpg")
    assert e.prompt == AID_PROMPT == ("Question: What is the label for this image?\n"
                                      "Answer the question using a single word.\nResponse:")


def test_aid_corrupt_images_are_skipped_when_read(aid_root):
    with pytest.warns(DataWarning):  # the stray files; scanning decodes nothing
        examples = [e for e in scan_aid(aid_root).examples if e.target in ("airport", "beach")]
    assert len(examples) == 9 + 9
    skipped = []
    kept, pixels = load_pixels(examples, 4, skipped)
    assert [e.image.name for e in kept] == [e.image.name for e in examples
                                            if e.image.name not in ("airport_99.jpg", "beach_98.jpg")]
    assert len(skipped) == 2 and "airport_99.jpg" in skipped[0] and "beach_98.jpg" in skipped[1]
    load_pixels(examples, 4, skipped)
    assert len(skipped) == 2  # a file is reported once, however often it is read
    # _fake_aid paints airport_1 in the flat colour (0, 20, 90); a flat image survives any resize.
    expected = (np.array([0, 20, 90]) / 255 - IMAGENET_MEAN) / IMAGENET_STD
    assert pixels.shape == (16, 3, 4, 4)
    assert np.allclose(pixels[0].mean((1, 2)).numpy(), expected, atol=0.05)  # JPEG shifts a few levels


def test_text_only_examples_get_no_pixels_or_zeros(aid_root):
    with pytest.warns(DataWarning):
        image_example = scan_aid(aid_root).examples[0]
    text_only = AidExample(None, "airport", 0)
    kept, pixels = load_pixels([text_only], 4, [])
    assert kept == [text_only] and pixels is None
    kept, pixels = load_pixels([text_only, image_example], 4, [])
    assert kept == [text_only, image_example]
    assert pixels.shape == (2, 3, 4, 4) and pixels[0].eq(0).all() and pixels[1].abs().sum() > 0


def test_aid_layout_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        scan_aid(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty.*no class folders.*Airport"):
        scan_aid(tmp_path / "empty")
    root = _fake_aid(tmp_path / "a", per_class=lambda i: 1)
    _jpeg(root / "Airplanes" / "airplanes_1.jpg")
    with pytest.raises(DataError, match=r"unknown class folder 'Airplanes'.*Airport, BareLand"):
        scan_aid(root)
    root = _fake_aid(tmp_path / "b", per_class=lambda i: 1)
    for f in (root / "Viaduct").iterdir():
        f.unlink()
    (root / "Viaduct").rmdir()
    with pytest.raises(DataError, match="lacks class folder.*Viaduct"):
        scan_aid(root)
    assert len(scan_aid(root, require_all_classes=False).examples) == 29


def _examples(sizes=AID_SIZES):
    return [AidExample(Path(d) / f"{label}_{n}.jpg", label, n)
            for d, label, size in zip(AID_CLASS_DIRS, AID_LABELS, sizes)
            for n in range(1, size + 1)]


def test_aid_paper_splits_sizes_stratified_disjoint():
    examples = _examples()
    for setting, n_train in (("20", 2000), ("50", 5000)):
        split = paper_split(examples, setting, seed=0)
        full = split.train + split.val
        assert (len(full), len(split.test)) == (n_train, 10000 - n_train)
        assert len(split.val) == round(0.1 * n_train)
        ids = [set(e.image for e in part) for part in (split.train, split.val, split.test)]
        assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
        assert len(ids[0] | ids[1] | ids[2]) == 10000
        fraction = n_train / 10000
        for label, size in zip(AID_LABELS, AID_SIZES):
            n = sum(e.target == label for e in full)
            assert abs(n - fraction * size) < 1  # largest remainder: off by less than one
            assert sum(e.target == label for e in split.val) >= 1


def test_aid_split_seeded_nested_and_test_independent_of_val():
    examples = _examples()
    a, b = split_aid(examples, 0.2, seed=3), split_aid(examples, 0.2, seed=3)
    assert a == b
    assert split_aid(examples, 0.2, seed=4).test != a.test
    half = split_aid(examples, 0.5, seed=3)
    assert set(e.image for e in a.train + a.val) <= set(e.image for e in half.train + half.val)
    assert split_aid(examples, 0.2, seed=3, val_fraction=0.3).test == a.test
    assert split_aid(examples, 0.2, seed=3, val_fraction=0).val == []


def test_aid_tiny_classes_keep_one_image_in_each_part():
    split = split_aid(_examples([3] * 30), 0.2, seed=0)
    for part in (split.train, split.val, split.test):
        assert sorted(set(e.target for e in part)) == sorted(AID_LABELS)
    with pytest.raises(DataError, match="too few images"):
        split_aid(_examples([2] * 30), 0.2)
    with pytest.raises(DataError, match="unknown AID setting"):
        paper_split(_examples([3] * 30), "30")


def test_aid_scoring_normalises():
    examples = _examples([1] * 4)[:4]  # airport, bareland, baseballfield, beach
    predictions = ["Airport.", "the bareland", "Baseball field", "BEACH!"]
    scores = score_aid(predictions, examples)
    assert scores["accuracy"] == 75.0 and scores["n"] == 4  # "baseball field" is two words, not the label
    assert scores["breakdown"] == {"airport": {"percent": 100.0, "n": 1}, "bareland": {"percent": 100.0, "n": 1},
                                   "baseballfield": {"percent": 0.0, "n": 1}, "beach": {"percent": 100.0, "n": 1}}


# -- shared metrics ----------------------------------------------------------------------------

def test_normalisation_and_text_scores():
    assert normalize_answer("  The X-Ray, of an  Apple's core. ") == "x ray of apples core"
    assert normalize_answer("1.5 cm") == "1.5 cm" and normalize_answer("A") == ""
    assert exact_match("The left lung.", "left lung")
    assert contains_answer("Yes, it is", "yes") and not contains_answer("Normal", "no")
    assert not contains_answer("anything", "the")  # nothing left of the gold answer
    assert token_f1("lung", "left lung") == pytest.approx(2 / 3)  # P 1, R 1/2
    assert token_f1("liver and spleen", "liver") == pytest.approx(0.5)  # P 1/3, R 1
    assert bleu1("lung", "left lung") == pytest.approx(math.exp(1 - 2))  # p1 = 1, BP = e^-1
    assert bleu1("liver and spleen", "liver") == pytest.approx(1 / 3)  # longer: BP = 1
    assert bleu1("lung lung lung", "lung") == pytest.approx(1 / 3)  # clipped counts
    assert bleu1("", "lung") == 0.0


# -- ScienceQA ---------------------------------------------------------------------------------

@pytest.fixture
def sqa_root(tmp_path):
    problems = {
        "1": _problem("Which is hot?", ["ice", "sun", "snow"], 1, "Look.", "image.png", "grade2",
                      "natural science"),
        "2": _problem("Which is a state?", ["Ohio", "Paris"], 0, "", None, "grade8",
                      "social science"),
        "3": _problem("Which word is a noun?", ["run", "blue", "cat"], 2, "Read.", None,
                      "grade11", "language science",
                      lecture="A noun names a thing.\nVerbs  name actions.",
                      solution="Cat  is a noun. "),
        "4": _problem("Which is a mammal?", ["eel", "owl", "ant", "cow"], 3, "", "image.png",
                      "grade6", "natural science", lecture="", solution=""),
        "5": _problem("Which map is right?", ["left", "right"], 0, "Maps.", "image.png",
                      "grade12", "social science"),
    }
    return write_scienceqa(tmp_path, problems, {"train": [], "test": list(problems)})


def test_scienceqa_prompts_exact(sqa_root):
    ex = {e.pid: e for e in load_scienceqa(sqa_root, "test")}
    assert ex["3"].prompt == ("Question: Which word is a noun?\nContext: Read.\n"
                              "Options: (A) run (B) blue (C) cat\nResponse:")
    assert ex["3"].target == ("The answer is C. BECAUSE: A noun names a thing.\\nVerbs name "
                              "actions. Cat is a noun.")
    assert ex["2"].prompt == ("Question: Which is a state?\nContext: N/A\n"
                              "Options: (A) Ohio (B) Paris\nResponse:")
    assert ex["2"].target == "The answer is A. BECAUSE: L. S."
    assert ex["4"].target == "The answer is D."  # no lecture, no solution: no "BECAUSE:"
    assert ex["1"].image == sqa_root / "images" / "test" / "1" / "image.png"
    assert ex["2"].image is None and ex["3"].answer_letter == "C"
    assert build_prompt("Q?", "  ", ["x", "y"], 1, "a", "b") == (
        "Question: Q?\nContext: N/A\nOptions: (A) x (B) y\nResponse:",
        "The answer is B. BECAUSE: a b")


def test_scienceqa_answer_extraction():
    assert extract_answer("The answer is B. BECAUSE: it is.") == "B"
    assert extract_answer("Maybe C. or The answer is A. fine") == "A"  # first pattern wins
    assert extract_answer("I pick D. because") == "D"
    assert extract_answer("The answer is b.") is None
    assert extract_answer("no letter here") is None


def test_scienceqa_fallback_is_seeded_and_in_range(sqa_root):
    ex = load_scienceqa(sqa_root)[3]  # 4 choices, A..D
    assert predicted_index("The answer is D.", ex) == 3
    picks = {predicted_index("The answer is E.", ex, seed=s) for s in range(40)}  # E: not a choice
    assert picks <= {0, 1, 2, 3} and len(picks) > 1
    assert predicted_index("gibberish", ex, seed=7) == predicted_index("gibberish", ex, seed=7)


def test_scienceqa_scores_and_breakdowns(sqa_root):
    examples = load_scienceqa(sqa_root)
    predictions = {"1": "The answer is B. BECAUSE: hot",  # right  NAT TXT IMG G1-6
                   "2": "Probably B. yes",                # wrong  SOC NO G7-12
                   "3": "The answer is C.",               # right  LAN TXT G7-12
                   "4": "A.",                             # wrong  NAT IMG G1-6
                   "5": "The answer is A."}               # right  SOC TXT IMG G7-12
    s = score_scienceqa(predictions, examples)
    assert s["accuracy"] == pytest.approx(60.0) and s["n"] == 5
    expected = {"NAT": 50.0, "SOC": 50.0, "LAN": 100.0, "TXT": 100.0, "IMG": 200 / 3, "NO": 0.0,
                "G1-6": 50.0, "G7-12": 200 / 3}
    assert {k: v["percent"] for k, v in s["breakdown"].items()} == pytest.approx(expected)
    assert {k: v["n"] for k, v in s["breakdown"].items()} == {"NAT": 2, "SOC": 2, "LAN": 1, "TXT": 3, "IMG": 3,
                                                               "NO": 1, "G1-6": 2, "G7-12": 3}
    assert score_scienceqa([predictions[e.pid] for e in examples], examples) == s


def test_scienceqa_errors_name_file_and_key(sqa_root):
    problems = json.loads((sqa_root / "problems.json").read_text())
    with pytest.raises(DataError, match=r"pid_splits.json has no split 'val'.*'test', 'train'"):
        load_scienceqa(sqa_root, "val")
    del problems["2"]["choices"]
    problems["4"]["answer"] = 9
    (sqa_root / "problems.json").write_text(json.dumps(problems))
    with pytest.raises(DataError, match=r"problems.json: problem '2' lacks key 'choices'"):
        load_scienceqa(sqa_root)
    problems["2"]["choices"] = ["a", "b"]
    (sqa_root / "problems.json").write_text(json.dumps(problems))
    with pytest.raises(DataError, match=r"problem '4': key 'answer' is 9.*4 choices"):
        load_scienceqa(sqa_root)
    (sqa_root / "pid_splits.json").write_text(json.dumps({"test": ["77"]}))
    with pytest.raises(DataError, match=r"pid '77' of split 'test' is not a key of .*problems"):
        load_scienceqa(sqa_root)
    (sqa_root / "problems.json").write_text("{broken")
    with pytest.raises(DataError, match="problems.json is not valid JSON"):
        load_scienceqa(sqa_root)


def test_scienceqa_missing_image_named(sqa_root):
    os.remove(sqa_root / "images" / "test" / "5" / "image.png")
    with pytest.raises(DataError, match=r"problem '5': image file .*5.image.png is missing"):
        load_scienceqa(sqa_root)
    assert len(load_scienceqa(sqa_root, check_images=False)) == 5


# -- Slake -------------------------------------------------------------------------------------

@pytest.fixture
def slake_root(tmp_path):
    entries = [_slake_entry(0, "Is this a CT image?", "Yes", "CLOSED"),
               _slake_entry(1, "Is the lung abnormal?", "No", "CLOSED"),
               _slake_entry(2, "Which organ is dark?", "Left Lung", "OPEN"),
               _slake_entry(3, "What organ is shown?", "Liver", "OPEN"),
               _slake_entry(4, "Where is the nodule?", "left lung", "OPEN"),
               _slake_entry(5, "这是什么?", "肝脏", "OPEN", lang="zh")]
    return write_slake(tmp_path, {"test": entries})


def test_slake_loads_english_and_scores(slake_root):
    examples = load_slake(slake_root, "test")
    assert [e.qid for e in examples] == ["0", "1", "2", "3", "4"]
    assert len(load_slake(slake_root, "test", lang=None)) == 6
    assert examples[2].prompt == "Question: Which organ is dark?\nResponse:"
    assert examples[2].target == "Left Lung" and examples[0].answer_type == "CLOSED"
    assert examples[0].image == slake_root / "imgs" / "xmlab1" / "source.jpg"
    predictions = ["Yes, it is.", "Normal", "the left lung", "liver and spleen", "lung"]
    s = score_slake(predictions, examples)
    # closed: "yes" found, "no" is not a word of "normal" -> 1/2
    # open:   hit 1,1,0; exact 1,0,0; F1 1, 1/2, 2/3; BLEU-1 1, 1/3, e^-1
    b = {k: v["percent"] for k, v in s["breakdown"].items()}
    assert b["closed_hit"] == pytest.approx(50.0)
    assert b["open_hit"] == pytest.approx(200 / 3)
    assert b["open_exact"] == pytest.approx(100 / 3)
    assert b["open_f1"] == pytest.approx(100 * (1 + 0.5 + 2 / 3) / 3)
    assert b["open_bleu1"] == pytest.approx(100 * (1 + 1 / 3 + math.exp(-1)) / 3)
    assert (s["breakdown"]["open_hit"]["n"], s["breakdown"]["closed_hit"]["n"]) == (3, 2)
    # Headline: "gt in pred" over all five questions, 1 closed + 2 open hits.
    assert s["accuracy"] == pytest.approx(60.0) and s["n"] == 5


def test_slake_errors_name_file_and_key(slake_root):
    with pytest.raises(DataError, match="train.json does not exist"):
        load_slake(slake_root, "train")
    bad = [_slake_entry(0, "q", "a", "CLOSED"), _slake_entry(1, "q", "a", "open-ended")]
    (slake_root / "test.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"test.json: entry 1: key 'answer_type' is 'open-ended'"):
        load_slake(slake_root)
    del bad[1]["question"]
    (slake_root / "test.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"test.json: entry 1 lacks key 'question'"):
        load_slake(slake_root)
    missing_image = [_slake_entry(0, "q", "a", "OPEN", img="x.jpg")]
    (slake_root / "test.json").write_text(json.dumps(missing_image))
    with pytest.raises(DataError, match=r"entry 0: image file .*x.jpg is missing"):
        load_slake(slake_root)


def test_every_scorer_returns_the_common_shape(sqa_root, tmp_path):
    """The tuning pipeline reads only accuracy / n / metric / breakdown, whatever the task."""
    sqa = load_scienceqa(sqa_root)
    slake = load_slake(write_slake(tmp_path / "slake", {"test": [_slake_entry(0, "q?", "Yes", "CLOSED")]}))
    aid = _examples([1] * 2)[:2]
    for s in (score_aid(["x", "y"], aid), score_scienceqa(["?"] * len(sqa), sqa), score_slake(["no"], slake)):
        assert set(s) == {"accuracy", "n", "metric", "breakdown"} and isinstance(s["n"], int)
        assert isinstance(s["accuracy"], float) and s["metric"]
        assert all(set(v) == {"percent", "n"} for v in s["breakdown"].values()) and s["breakdown"]
    assert score_slake([], [])["accuracy"] is None  # nothing scored: no number rather than a fake 0


# -- synthetic AID -----------------------------------------------------------------------------

def _tree_bytes(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


def test_synthetic_set_layout_determinism_and_cache(tmp_path, monkeypatch):
    root = ensure_synthetic_aid(tmp_path / "c1", per_class=2, size=32, seed=5)
    scan = scan_aid(root)
    assert scan.synthetic and not scan.warnings
    assert Counter(e.target for e in scan.examples) == dict.fromkeys(AID_LABELS, 2)
    assert {e.image.relative_to(root).as_posix() for e in scan.examples} >= {
        "Airport/airport_1.jpg", "StorageTanks/storagetanks_2.jpg"}
    with Image.open(root / "Viaduct" / "viaduct_1.jpg") as im:
        assert (im.format, im.size, im.mode) == ("JPEG", (32, 32), "RGB")
    assert json.loads((root / SYNTHETIC_MARKER).read_text())["notice"] == SYNTHETIC_NOTICE

    again = ensure_synthetic_aid(tmp_path / "c2", per_class=2, size=32, seed=5)
    assert _tree_bytes(again) == _tree_bytes(root)  # same seed, same bytes
    other = ensure_synthetic_aid(tmp_path / "c2", per_class=2, size=32, seed=6)
    assert _tree_bytes(other) != _tree_bytes(root)

    def no_rewrite(*args, **kwargs):
        raise AssertionError("a complete cache was regenerated")
    monkeypatch.setattr(synthetic_aid, "write_synthetic_aid", no_rewrite)
    assert ensure_synthetic_aid(tmp_path / "c1", per_class=2, size=32, seed=5) == root
    monkeypatch.undo()

    (root / "Pond" / "pond_2.jpg").unlink()  # incomplete -> regenerated in full
    assert _tree_bytes(ensure_synthetic_aid(tmp_path / "c1", per_class=2, size=32, seed=5)) \
        == _tree_bytes(again)


def test_synthetic_data_is_announced_as_synthetic(tmp_path):
    task = load_task("aid", None, cache_dir=tmp_path / "cache", synthetic_per_class=3, image_size=16)
    assert task.synthetic and task.label == "aid (SYNTHETIC)"
    marker = json.loads((Path(task.source) / SYNTHETIC_MARKER).read_text())
    assert marker["notice"] == SYNTHETIC_NOTICE and "not the real AID" in SYNTHETIC_NOTICE
    # A copy of the set keeps its marker, so it is still announced when passed as --data-root.
    copy = tmp_path / "copy"
    shutil.copytree(task.source, copy)
    assert load_task("aid", str(copy), cache_dir=tmp_path / "unused").label == "aid (SYNTHETIC)"
    (copy / SYNTHETIC_MARKER).unlink()
    assert load_task("aid", str(copy), cache_dir=tmp_path / "unused").label == "aid"


def test_synthetic_unwritable_cache_is_a_data_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(DataError, match=r"cannot write the synthetic AID set under .*file/cache"):
        ensure_synthetic_aid(tmp_path / "file" / "cache", per_class=1, size=8)
    with pytest.raises(DataError, match="per_class >= 1"):
        ensure_synthetic_aid(tmp_path, per_class=0)


def test_synthetic_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing_render(*args):
        calls.append(args)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return Image.new("RGB", (16, 16))
    monkeypatch.setattr(synthetic_aid, "render", failing_render)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic_aid(tmp_path, per_class=3, size=16)
    assert list(tmp_path.iterdir()) == []  # neither a half set nor a temporary folder


def test_synthetic_residential_trio_differs_by_density_not_colour():
    trio = ("denseresidential", "mediumresidential", "sparseresidential")
    colour, edges = {}, {}
    for label in trio:
        images = [np.asarray(render(label, i, 64, 0), np.float32) for i in range(1, 25)]
        colour[label] = np.stack([x.mean((0, 1)) for x in images])
        grey = [x.mean(2) for x in images]
        edges[label] = np.mean([np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean()
                                for g in grey])
    # Denser building means more roof edges per pixel.
    assert edges["denseresidential"] > edges["mediumresidential"] > edges["sparseresidential"]
    # A nearest-centroid classifier on mean colour (fit on even, tested on odd images) must stay
    # far from perfect: the trio shares one palette.
    centroids = np.stack([colour[label][::2].mean(0) for label in trio])
    test = np.concatenate([colour[label][1::2] for label in trio])
    truth = np.repeat(np.arange(3), 12)
    accuracy = (np.argmin(((test[:, None] - centroids) ** 2).sum(-1), 1) == truth).mean()
    assert accuracy < 0.8


def test_synthetic_classes_all_render_distinct_textured_scenes():
    images = [np.asarray(render(label, 1, 32, 0), np.float32) for label in AID_LABELS]
    assert len({x.tobytes() for x in images}) == 30
    assert min(x.std() for x in images) > 2.0  # every scene has texture, none is a flat colour


# -- the LLaVA formats (--arch llava): LLaVA-1.5's questions, hand-written here -------------------

def test_scienceqa_llava_prompts_exact(sqa_root):
    from eas.data.scienceqa import build_llava_prompt
    ex = {e.pid: e for e in load_scienceqa(sqa_root, "test", arch="llava")}
    assert ex["3"].prompt == ("Context: Read.\nQuestion: Which word is a noun?\nOptions: (A) run (B) blue (C) cat\n"
                              "Answer with the option's letter from the given choices directly.")
    assert ex["3"].target == "C" and ex["2"].target == "A"
    assert ex["2"].prompt.startswith("Context: N/A\nQuestion: Which is a state?\nOptions: (A) Ohio (B) Paris\n")
    assert build_llava_prompt("Q?  ", " ", ["x", "y"], 1)[0].startswith("Context: N/A\nQuestion: Q? \nOptions:")


def test_scienceqa_llava_answer_extraction_and_score(sqa_root):
    from eas.data.scienceqa import extract_llava_answer
    # LLaVA's eval_science_qa.py: the letter alone, "X. ...", or "The answer is X."; else a random choice
    assert [extract_llava_answer(t) for t in ("B", " C\n", "D. cow", "so The answer is A.", "b", "cat", "A.")] == \
        ["B", "C", "D", "A", None, None, None]
    examples = load_scienceqa(sqa_root, arch="llava")
    predictions = ["B", "B", "C", "A", "A"]  # right, wrong, right, wrong, right (as the LaVIN test above)
    s = score_scienceqa(predictions, examples, extract=extract_llava_answer)
    assert s["accuracy"] == pytest.approx(60.0) and "LLaVA's extraction" in s["metric"]
    assert extract_answer("B") is None  # LaVIN's extraction would not read the bare letter


def test_llava_formats_of_every_task(tmp_path):
    from eas.data.tasks import load_task
    from eas.model.llava import llava_question
    aid = load_task("aid", None, cache_dir=tmp_path / "cache", synthetic_per_class=3, image_size=16, arch="llava")
    assert {e.prompt for e in aid.train + aid.test} == {"What is the label for this image?\n"
                                                        "Answer the question using a single word."}
    lavin = load_task("aid", None, cache_dir=tmp_path / "cache", synthetic_per_class=3, image_size=16)
    assert llava_question(lavin.train[0].prompt) == aid.train[0].prompt  # the text LLaVA-style runs always read
    root = write_slake(tmp_path / "slake", {s: [_slake_entry(i, "Is this a CT?", "Yes", "CLOSED")]
                                            for i, s in enumerate(("train", "validate", "test"))})
    slake = load_task("slake", str(root), cache_dir=tmp_path, arch="llava")
    assert slake.test[0].prompt == "Is this a CT?\nAnswer the question using a single word or phrase."
    assert slake.prompt_format.fill("Q") == "Q\nAnswer the question using a single word or phrase."
    assert load_task("slake", str(root), cache_dir=tmp_path).test[0].prompt == "Question: Is this a CT?\nResponse:"
    for task in (aid, slake):  # Llava.build_batch leaves a LLaVA-form question as it is
        assert llava_question(task.test[0].prompt) == task.test[0].prompt
    with pytest.raises(DataError, match="unknown wiring 'blip'"):
        load_task("aid", None, cache_dir=tmp_path / "cache", arch="blip")
