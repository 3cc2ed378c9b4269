"""The deployed model answers as PyTorch does: a tuned run's test split through ONNX Runtime and PyTorch.

    python benchmarks/deploy_accuracy.py runs/aid [--doc docs/DEPLOY.md] [--batch 64] [--max-test N]

Exports the run's merged.pt (fp32 ONNX, verified, into a temporary folder), then answers every test
example twice, in the same batches: PyTorch greedy generation from merged.pt (load_merged in fp32,
the examples' own prompts, eas/model/image.py pixels) and the ONNX Runtime runtime driven by the export
folder alone (export/ort_runtime.py: the manifest's template, layout and preprocessing, as a C++
program would). Both are scored by the task's scorer; the tokens are compared example by example.
Writes <run>/deploy_accuracy.json and the section between the markers in --doc. Synthetic data is
called SYNTHETIC in every line that shows a number.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxruntime  # noqa: E402
import torch  # noqa: E402

from eas.data.tasks import load_pixels, load_task  # noqa: E402
from eas.errors import EASError, RunFolderError, UsageError  # noqa: E402
from eas.io.files import read_json, write_text_atomic  # noqa: E402
from eas.io.merged import load_merged  # noqa: E402
from eas.model.image import open_image  # noqa: E402
from eas.model.tokenizer import Tokenizer  # noqa: E402
from export.ort_runtime import OrtRuntime  # noqa: E402
from export.pipeline import export_model  # noqa: E402

BEGIN, END = "<!-- deploy_accuracy:begin -->", "<!-- deploy_accuracy:end -->"


def test_split(run: Path, max_test: int | None, image_size: int):
    """The run's task and test examples, rebuilt from the settings its report records."""
    cfg = read_json(run / "report.json", "tuning report", RunFolderError)["config"]
    task = load_task(cfg["task"], cfg["data_root"], cache_dir=cfg["cache_dir"], setting=cfg["setting"],
                     seed=cfg["seed"], image_size=image_size, synthetic_per_class=cfg["synthetic_per_class"],
                     arch=cfg.get("arch") or "lavin")
    return task, task.test[:max_test] if max_test else task.test


@torch.no_grad()
def pytorch_tokens(model, tok: Tokenizer, part, pixels, budget: int) -> list[list[int]]:
    batch = model.build_batch(tok, [(e.prompt, None, e.image is not None) for e in part])
    return model.generate(batch, pixels, budget, eos_id=tok.eos_id)


def ort_tokens(rt: OrtRuntime, part, budget: int) -> list[list[int]]:
    """The export's own prompt for each example: the task's question in the manifest's template where
    the task has one question (AID), else the example's prompt as it was tuned."""
    fmt = rt.prompt_format
    prompts = [fmt.prompt(None) if fmt.question is not None else e.prompt for e in part]
    images = [open_image(e.image) if e.image is not None else None for e in part]
    return rt.generate(prompts, images, budget)


def compare(run: Path, batch: int, max_test: int | None) -> dict:
    # fp32 compute on the stored (possibly fp16-rounded) weights: what the fp32 export computes, and what
    # the tuning run scored; loaded as stored, an fp16 merged.pt would run PyTorch in fp16 on the CPU.
    model = load_merged(run / "merged.pt", dtype=torch.float32)
    tok, fmt = Tokenizer(model.tokenizer_ref), model.prompt_format
    task, test = test_split(run, max_test, model.cfg.vision.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        export_model(run / "merged.pt", Path(tmp) / "export", max_batch=batch, onnx_only=True, log=lambda line: None)
        export_s = time.perf_counter() - t
        rt = OrtRuntime(Path(tmp) / "export")
        kept, tokens, seconds, skipped = [], {"pytorch": [], "onnxruntime": []}, {"pytorch": 0.0, "onnxruntime": 0.0}, []
        for i in range(0, len(test), batch):
            part, pixels = load_pixels(test[i:i + batch], model.cfg.vision.image_size, skipped)
            for name, run_part in (("pytorch", lambda: pytorch_tokens(model, tok, part, pixels, fmt.max_new_tokens)),
                                   ("onnxruntime", lambda: ort_tokens(rt, part, fmt.max_new_tokens))):
                t = time.perf_counter()
                tokens[name] += run_part()
                seconds[name] += time.perf_counter() - t
            kept += part
            print(f"\r{len(kept)}/{len(test)} examples", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        providers = sorted(set(rt.providers.values()))
    scores = {name: task.score([tok.decode(t) for t in toks], kept) for name, toks in tokens.items()}
    same = sum(a == b for a, b in zip(tokens["pytorch"], tokens["onnxruntime"]))
    return {"run": str(run), "task": task.name, "synthetic": task.synthetic, "label": task.label,
            "n": len(kept), "skipped_files": skipped, "batch": batch, "max_new_tokens": fmt.max_new_tokens,
            "template": fmt.template, "question": fmt.question,
            "template_prompt_is_tuning_prompt": fmt.question is None or all(fmt.prompt(None) == e.prompt for e in kept),
            "accuracy": {k: v["accuracy"] for k, v in scores.items()}, "identical_tokens": same,
            "seconds": {"export_and_verify": round(export_s, 1), **{k: round(v, 1) for k, v in seconds.items()}},
            "onnxruntime_providers": providers, "versions": {"torch": torch.__version__,
                                                              "onnxruntime": onnxruntime.__version__},
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads"}


def section(r: dict, command: str) -> str:
    name, n = r["label"], r["n"]
    note = ("SYNTHETIC data (procedurally drawn AID-like scenes, not the real AID): every number here is on "
            "synthetic data.\n\n" if r["synthetic"] else "")
    return (f"{note}Written by `{command}` on {r['machine']} (torch {r['versions']['torch']}, onnxruntime "
            f"{r['versions']['onnxruntime']}, {', '.join(r['onnxruntime_providers'])}); run `{r['run']}`.\n\n"
            f"| {name}, {n} test examples, batch {r['batch']}, {r['max_new_tokens']} new tokens | accuracy | time |\n"
            f"|---|---|---|\n"
            f"| PyTorch, merged.pt (eager fp32, greedy) | {r['accuracy']['pytorch']:.2f} % | {r['seconds']['pytorch']} s |\n"
            f"| ONNX Runtime, fp32 export folder only | {r['accuracy']['onnxruntime']:.2f} % | "
            f"{r['seconds']['onnxruntime']} s |\n\n"
            f"- identical answer tokens: {r['identical_tokens']} / {n} ({name})\n"
            f"- prompts: ONNX Runtime asked the manifest's template filled with the task's own question; it equals "
            f"the tuning prompt of every example: {r['template_prompt_is_tuning_prompt']}\n"
            f"- export + ONNX Runtime verification: {r['seconds']['export_and_verify']} s\n")


def doc_parts(doc: Path) -> tuple[str, str]:
    """The page before and after the generated section; checked before the long run, not after it."""
    page = doc.read_text(encoding="utf-8") if doc.is_file() else ""
    if page.count(BEGIN) != 1 or page.count(END) != 1 or page.index(BEGIN) > page.index(END):
        raise UsageError(f"--doc {doc}: expected one {BEGIN} ... {END} pair to write between")
    head, rest = page.split(BEGIN)
    return head + BEGIN + "\n", END + rest.split(END, 1)[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="ONNX Runtime vs PyTorch accuracy of a tuned run's merged.pt")
    ap.add_argument("run", type=Path, help="run folder of `python run.py tune` (merged.pt, report.json)")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "DEPLOY.md")
    ap.add_argument("--batch", type=int, default=64, help="examples per batch, both sides (the export's --max-batch)")
    ap.add_argument("--max-test", type=int, help="only the first N test examples")
    args = ap.parse_args(argv)
    command = "python benchmarks/deploy_accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        if args.batch < 1 or (args.max_test is not None and args.max_test < 1):
            raise UsageError(f"--batch {args.batch} / --max-test {args.max_test}: expected numbers of at least 1")
        head, tail = doc_parts(args.doc)
        result = compare(args.run, args.batch, args.max_test)
        write_text_atomic(args.run / "deploy_accuracy.json", json.dumps(result, indent=1) + "\n")
        write_text_atomic(args.doc, head + section(result, command) + tail)
    except EASError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(section(result, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
