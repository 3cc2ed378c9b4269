"""Stages 5-6 (rank 0): test accuracy of the unmerged, dynamic- and static-merged forms, then
merged.pt, adapters.pt, predictions.jsonl and the report."""
from __future__ import annotations

import dataclasses
import json
import time

import torch
from tqdm import tqdm

from eas.adapters.attach import set_skipped
from eas.adapters.calibrate import calibrate_routes, clear_routes
from eas.adapters.merge import merge
from eas.adapters.params import trainable_report
from eas.data.tasks import load_pixels
from eas.model.image import pixel_loader
from eas.errors import RunFolderError, UsageError
from eas.io.files import read_json
from eas.io.merged import as_stored, save_merged
from eas.tune.checkpoints import Checkpointer
from eas.model.config import dtype_name
from eas.tune.config import defaults_note
from eas.tune.recipes import describe
from eas.tune.report import write_report
from eas.tune.session import Session
from eas.tune.train import autocast_context, trainable_state_dict

CALIBRATION_EXAMPLES = 512  # training examples whose mean route the static merge folds in


@torch.no_grad()
def evaluate(s: Session, ckpt: Checkpointer) -> dict:
    t0 = time.monotonic()
    model, cfg = s.model.eval(), s.cfg
    skip = s.chosen()
    set_skipped(model.llama, skip)
    clear_routes(model)
    forms = merged_forms(s, model)
    test = s.task.test[:cfg.max_test] if cfg.max_test else s.task.test
    predictions, results = {}, {}
    for name, net in forms.items():
        t = time.monotonic()
        examples, predictions[name] = predict(s, net, test, name)
        results[name] = {**s.task.score(predictions[name], examples), "seconds": round(time.monotonic() - t, 2)}
    s.folder.copy_in(s.tok_path, "tokenizer.model")
    save_merged(forms[cfg.merge], s.folder.path / "merged.pt", s.task.prompt_format, tokenizer="tokenizer.model",
                dtype=s.merged_dtype)
    s.folder.save("adapters.pt", {"adapters": trainable_state_dict(model), "skip_layers": list(skip),
                                  "config": dataclasses.asdict(cfg)})
    s.folder.write_text("predictions.jsonl", "".join(
        json.dumps({"image": str(e.image), "target": e.target, **{k: v[i] for k, v in predictions.items()}}) + "\n"
        for i, e in enumerate(examples)))
    s.timings["evaluate_s"] = time.monotonic() - t0
    report = build_report(s, skip, examples, results, forms)
    write_report(report, s.folder)
    ckpt.save("done", 0, 0.0, collective=False)
    return report


def merged_forms(s: Session, model) -> dict:
    """{unmerged, dynamic, static}; the static merge folds in the mean route over training examples.
    The merged forms are scored as merged.pt stores them: their weights rounded to the base's dtype.
    An adapter the static fold refuses (PIA.fold_static) ends a `--merge static` run with that
    error; a `--merge dynamic` run goes on without the static form."""
    forms = {"unmerged": model, "dynamic": as_stored(merge(model, "dynamic"), s.merged_dtype)}
    bs = s.cfg.eval_batch_size
    train = s.task.train
    calibration = [s.batches.prepare(train[i:i + bs]) for i in range(0, min(len(train), CALIBRATION_EXAMPLES), bs)]
    with autocast_context(s.device, s.dtype):
        calibrate_routes(model, [b for b in calibration if b], forward=lambda m, b: m(*b))
    try:
        forms["static"] = as_stored(merge(model, "static", s.merged_dtype), s.merged_dtype)
    except UsageError as e:
        if s.cfg.merge == "static":
            raise UsageError(f"{e}. This run cannot write a static merged.pt: tune again with --merge dynamic "
                             f"(a new run; its routers route per example)") from e
        s.static_refused = str(e)
    finally:
        clear_routes(model)
    return forms


def predict(s: Session, net, examples, name: str) -> tuple[list, list[str]]:
    """(the examples whose image could be read, the answer `net` generates for each)."""
    kept, out = [], []
    bs = s.cfg.eval_batch_size
    for i in tqdm(range(0, len(examples), bs), desc=f"test {name}", leave=False, disable=not s.lead):
        part, pixels = load_pixels(examples[i:i + bs], s.model.cfg.vision.image_size, s.batches.skipped_files,
                                   pixel_loader(s.model.cfg))
        if not part:
            continue
        batch = net.build_batch(s.tok, [(e.prompt, None, e.image is not None) for e in part]).to(s.device)
        with autocast_context(s.device, s.dtype):
            tokens = net.generate(batch, None if pixels is None else pixels.to(s.device),
                                  s.task.prompt_format.max_new_tokens, eos_id=s.tok.eos_id)
        kept += part
        out += [s.tok.decode(t) for t in tokens]
    return kept, out


def build_report(s: Session, skip, examples, results: dict, forms: dict) -> dict:
    cfg, task, searched = s.cfg, s.task, s.steps("search") > 0
    return {
        "task": task.name, "synthetic": task.synthetic, "data": task.source,
        "split": {"train": len(task.train), "val": len(task.val), "test": len(examples)},
        "recipe": describe(cfg.recipe, cfg.arch, dataclasses.asdict(cfg)),
        "skip_layers": list(skip), "k": s.k, "unit": cfg.unit, "n_units": s.n_units, "searched": searched,
        "preferences": [round(x, 6) for x in s.search.scores.tolist()],
        "importance_order": s.search.importance_order(),
        "trajectories": s.search.trajectories().tolist() if searched else [],
        "accuracy": {k: v["accuracy"] for k, v in results.items()}, "results": results,
        "params": trainable_report(s.model),
        "defaults": defaults_note(cfg, s.model.llama.cfg.dim), "router_constants": forms["static"].merge_info["router_constants"] if "static" in forms else None,
        "static_refused": s.static_refused,
        "merged": {"path": str(s.folder.path / "merged.pt"), "mode": cfg.merge},
        "kv_cache_share": len(forms[cfg.merge].llama.cfg.attention_layers) / s.n_units,
        "timings_s": {k: round(v, 1) for k, v in s.timings.items()},
        "skipped_files": s.batches.skipped_files, "skipped_batches": s.batches.skipped_batches,
        "warnings": task.warnings, "world_size": s.world,
        "oracle": read_json(s.folder.path / "oracle.json", "oracle result", RunFolderError) if cfg.oracle else None,
        "config": {**dataclasses.asdict(cfg), "out": str(s.folder.path), "device": str(s.device),
                   "dtype": dtype_name(s.dtype)},
    }
