"""`python run.py tune`: the whole EAS recipe in one resumable command (eas_method.md §3-4).

Stages: (1) super-net warm-up on random sub-networks, (2) bandit search, (3) top-K skip set,
(3b, --oracle) the oracle skip-one / greedy losses of the super-network, (4) fine-tune of the chosen sub-network, (5) test accuracy of the unmerged, static- and
dynamic-merged forms, (6) merged.pt + report. Under torchrun every rank trains on its shard of
each global batch; gradients and losses are summed across ranks (eas.tune.train.train_step).
"""
from __future__ import annotations

from eas.tune.checkpoints import Checkpointer
from eas.model.config import dtype_name
from eas.tune.config import TuneConfig, validate
from eas.distributed import barrier
from eas.tune.evaluate import evaluate
from eas.tune.finetune_stage import run_finetune
from eas.tune.interrupts import StopOnSignal
from eas.tune.oracle_stage import run_oracle
from eas.tune.search_stage import run_search
from eas.tune.session import Session
from eas.tune.setup import open_session


def tune(cfg: TuneConfig) -> dict:
    """Run (or resume) the recipe; returns the report (rank 0) or {} (other ranks).

    Bad settings or input raise an eas.errors.EASError before any training step; Ctrl-C or
    SIGTERM during training raises eas.tune.interrupts.Interrupted once the step is saved."""
    validate(cfg)
    s = open_session(cfg)
    with StopOnSignal(s.lead) as stop:
        ckpt = Checkpointer(s, stop)
        stage, step, saved = _start(s, ckpt)
        if s.lead:
            _announce(s)
        if stage == "search":
            run_search(s, ckpt, step, saved)
            stage, step, saved = "finetune", 0, None
        if stage == "finetune" and step == 0 and s.cfg.oracle and s.lead:
            run_oracle(s)  # the super-network's adapters, before the fine-tune replaces them
        if stage == "finetune":
            run_finetune(s, ckpt, step, saved)
    report = evaluate(s, ckpt) if s.lead else {}  # short: Ctrl-C simply stops it
    barrier()
    return report


def _start(s: Session, ckpt: Checkpointer) -> tuple[str, int, dict | None]:
    """(stage, step, saved state) to begin with: a checkpoint's with --resume, else the start."""
    if s.cfg.resume and s.folder.state.exists():
        saved = ckpt.restore()
        return saved["stage"], saved["step"], saved
    s.folder.start_log()
    if s.cfg.resume and s.lead:
        print(f"--resume: no checkpoint at {s.folder.state}, starting afresh")
    return "search", 0, None


def _announce(s: Session) -> None:
    t, c = s.task, s.cfg
    print(f"task {t.label}: {len(t.train)} train / {len(t.val)} val / {len(t.test)} test examples from {t.source}")
    if t.synthetic:
        print("NOTE: SYNTHETIC data (procedurally drawn AID-like scenes, not the real AID); every number "
              "below is on synthetic data.")
    plan = (f"fixed skip set {list(c.skip_set)}" if c.skip_set is not None else
            f"search K={s.k} of {s.n_units} {c.unit} units ({c.search} bandit)" if s.k else "no skipping (adapter baseline)")
    print(f"plan: {plan}; {s.steps('search')} search + {s.steps('finetune')} fine-tune steps of "
          f"{c.batch_size} on {s.world} process(es), device {s.device} ({dtype_name(s.dtype)})")
