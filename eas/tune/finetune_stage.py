"""Stage 4: fine-tune the adapters with the chosen units skipped (eas_method.md §4)."""
from __future__ import annotations

from eas.adapters.attach import set_skipped
from eas.tune.checkpoints import Checkpointer
from eas.tune.loop import loss_record, run_stage
from eas.tune.session import Session
from eas.tune.train import load_trainable_state


def run_finetune(s: Session, ckpt: Checkpointer, start: int, saved: dict | None) -> None:
    skip = s.chosen()
    if start == 0:
        # The fine-tune of a skip set is a function of (seed, skip set) alone, whatever the search
        # before it drew: a searched set and the same set given by --skip-set train identically.
        s.seed_dropout()
        if not s.cfg.warm_start:
            load_trainable_state(s.model, s.initial, "initial adapters")  # fresh, as the authors do
    set_skipped(s.model.llama, skip)

    def step_fn(step: int, total: int) -> tuple[dict, dict]:
        loss = s.train_step("finetune", step, total)
        return loss_record(loss), {"loss": "skipped" if loss is None else f"{loss:.3f}"}

    run_stage(s, ckpt, "finetune", start, saved, f"fine-tune skip={list(skip)}", step_fn)
