"""The training loop the search and the fine-tune share: step, log, checkpoint, time."""
from __future__ import annotations

import time
from collections.abc import Callable

from eas.tune.checkpoints import Checkpointer
from eas.tune.session import Session


def loss_record(loss: float | None) -> dict:
    return {"loss": None, "skipped_batch": True} if loss is None else {"loss": round(loss, 5)}


def run_stage(s: Session, ckpt: Checkpointer, stage: str, start: int, saved: dict | None, desc: str,
              step_fn: Callable[[int, int], tuple[dict, dict]]) -> None:
    """Steps start..end of `stage`; step_fn(step, total) trains one step and returns (its log
    record, what the progress bar shows). saved: the checkpoint resumed from, if any."""
    total = s.steps(stage)
    s.start_optimizer(saved)
    t0 = time.monotonic() - (saved or {}).get("stage_time", 0.0)
    bar = s.bar(total, start, desc)
    s.model.train()
    for step in range(start, total):
        record, shown = step_fn(step, total)
        s.folder.log({"stage": stage, "step": step, **record})
        bar.set_postfix(shown)
        bar.update()
        ckpt.maybe_save(stage, step + 1, t0, final=step + 1 == total)
    bar.close()
    s.timings[f"{stage}_s"] = time.monotonic() - t0
