"""state.pt: what a run needs to continue exactly where it stopped, even after kill -9.

Everything that decides a number is a function of --seed and the step (batch order, the search's
generator) or is saved here (adapters, optimizer, preferences, each rank's dropout generator), so
`--resume` continues bit-identically with the same number of processes.
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path

import torch

from eas.errors import CheckpointError
from eas.model.config import dtype_name
from eas.distributed import from_rank_zero, gather
from eas.tune.interrupts import Interrupted, StopOnSignal
from eas.tune.session import Session
from eas.tune.train import load_checkpoint, load_trainable_state, trainable_state_dict

STATE_KEYS = ("stage", "step", "stage_time", "config", "world_size", "dropout_rngs", "adapters", "optimizer",
              "search", "timings", "log_bytes", "skipped_files", "skipped_batches")
# Settings that do not change the result, so a resumed run may differ in them (a moved run folder included).
RESUME_FREE = ("out", "cache_dir", "resume", "save_minutes", "save_every", "eval_batch_size")
PATHS = ("data_root", "base", "llama", "clip")


def comparable(s: Session) -> dict:
    """The settings that decide a run's numbers, paths resolved and device/dtype as they were chosen."""
    d = dataclasses.asdict(s.cfg)
    d.update({k: str(Path(d[k]).resolve()) for k in PATHS if d[k] is not None})
    d.update(skip_set=None if s.cfg.skip_set is None else list(s.cfg.skip_set), device=s.device.type,
             dtype=dtype_name(s.dtype))
    return {k: v for k, v in d.items() if k not in RESUME_FREE}


class Checkpointer:
    def __init__(self, session: Session, stop: StopOnSignal):
        self.s, self.stop = session, stop
        self.last_save = time.monotonic()

    def maybe_save(self, stage: str, step: int, t0: float, final: bool) -> None:
        """Checkpoint when due; after Ctrl-C or SIGTERM, checkpoint the finished step and stop."""
        cfg = self.s.cfg
        due = final or (cfg.save_every and step % cfg.save_every == 0) or \
            time.monotonic() - self.last_save > 60 * cfg.save_minutes
        due, stop = from_rank_zero(bool(due), self.stop.reason is not None)  # every rank joins the same saves
        if due or stop:
            if final and stage == "search":
                stage, step = "finetune", 0
            self.save(stage, step, 0.0 if final else time.monotonic() - t0)
        if stop:
            raise Interrupted(f"interrupted ({self.stop.reason or 'signal on rank 0'}): {stage} step {step} is "
                              f"saved in {self.s.folder.state}; continue with the same command plus --resume")

    def save(self, stage: str, step: int, stage_time: float, collective: bool = True) -> None:
        """collective=False when rank 0 saves alone (after training, while the others wait)."""
        s = self.s
        rng = s.dropout.get_state()
        rngs = gather(rng) if collective else [rng] * s.world
        if s.lead:
            fresh_stage = step == 0 and stage != "search"
            s.folder.save("state.pt", {
                "stage": stage, "step": step, "stage_time": stage_time, "config": comparable(s),
                "world_size": s.world, "dropout_rngs": rngs, "adapters": trainable_state_dict(s.model),
                "optimizer": None if fresh_stage else s.optimizer.state_dict(), "search": s.search.state_dict(),
                "timings": dict(s.timings), "log_bytes": s.folder.log_size(),
                "skipped_files": list(s.batches.skipped_files), "skipped_batches": list(s.batches.skipped_batches)})
        self.last_save = time.monotonic()

    def restore(self) -> dict:
        """Load state.pt into the session; -> the saved stage, step and optimizer state."""
        s = self.s
        saved = load_checkpoint(s.folder.state, required=STATE_KEYS)
        mine, theirs = comparable(s), saved["config"]
        diff = sorted(k for k in mine if mine[k] != theirs.get(k))
        if diff:
            raise CheckpointError(f"cannot --resume {s.folder.state}: it was started with different settings: "
                                  + ", ".join(f"{k}={theirs.get(k)!r} (now {mine[k]!r})" for k in diff))
        load_trainable_state(s.model, saved["adapters"], str(s.folder.state))
        s.search.load_state_dict(saved["search"])
        s.timings.update(saved["timings"])
        s.batches.skipped_files[:] = saved["skipped_files"]
        s.batches.skipped_batches[:] = saved["skipped_batches"]
        self._restore_dropout(saved)
        s.folder.truncate_log(saved["log_bytes"])
        s.folder.log({"resumed": saved["stage"], "step": saved["step"]})
        if s.lead:
            print(f"resumed {s.folder.state}: stage {saved['stage']}, step {saved['step']}")
        return {**saved, "stage": "evaluate"} if saved["stage"] == "done" else saved

    def _restore_dropout(self, saved: dict) -> None:
        s = self.s
        if saved["world_size"] != s.world:
            warnings.warn(f"resuming a {saved['world_size']}-process checkpoint with {s.world} processes: dropout "
                          f"streams restart, the run stays valid but is not bit-identical", RuntimeWarning)
            return
        state = saved["dropout_rngs"][s.rank]
        if not isinstance(state, torch.Tensor):
            raise CheckpointError(f"{s.folder.state}: dropout_rngs[{s.rank}] is not a generator state")
        s.dropout.set_state(state)
