"""Stage 1-2: super-net warm-up on random sub-networks, then bandit updates (eas_method.md §3.1).

Under torchrun rank 0 draws every sub-network and broadcasts it, and the preferences are averaged.
"""
from __future__ import annotations

import math

import torch

from eas.adapters.attach import set_skipped
from eas.search import bandit_round, broadcast_subnets
from eas.tune.checkpoints import Checkpointer
from eas.distributed import sum_over_ranks
from eas.tune.loop import loss_record, run_stage
from eas.tune.session import Session


def run_search(s: Session, ckpt: Checkpointer, start: int, saved: dict | None) -> None:
    if s.steps("search") == 0:
        return
    warm = round(s.cfg.warmup_epochs * s.batches.epoch_steps("search"))

    def step_fn(step: int, total: int) -> tuple[dict, dict]:
        subnet = broadcast_subnets([s.search.sample()])[0]
        set_skipped(s.model.llama, subnet)
        loss = s.train_step("search", step, total)
        record = {**loss_record(loss), "skip": list(subnet)}
        if step >= warm and (step - warm) % s.cfg.nas_every == 0:
            record.update(_bandit_update(s, (step - warm) // s.cfg.nas_every, step))
        return record, {"loss": "skipped" if loss is None else f"{loss:.3f}",
                        "phase": "warm-up" if step < warm else "bandit"}

    run_stage(s, ckpt, "search", start, saved, "search", step_fn)


def _bandit_update(s: Session, r: int, step: int) -> dict:
    """Round r of the bandit: score M distinct sub-networks on the r-th validation batch."""
    batch = s.batches.val(r, step)
    if batch is None:
        return {"bandit_skipped": True}
    m = min(s.cfg.candidates, math.comb(s.n_units, s.k))
    subnets, losses = bandit_round(s.search, s.target, _val_loss(s, batch), m=m)
    return {"candidates": [list(x) for x in subnets], "val_losses": [round(x, 5) for x in losses],
            "scores": [round(x, 5) for x in s.search.scores.tolist()]}


def _val_loss(s: Session, batch):
    """The reward's loss on one validation batch: dropout off, summed over ranks."""
    def model_fn():
        s.model.eval()
        try:
            total = torch.zeros(2, dtype=torch.float64, device=s.device)
            if batch:
                loss, count = s.batches.loss(s.model, batch)
                total += torch.stack([loss.double(), torch.tensor(float(count), device=s.device)])
            sum_over_ranks(total)
            return total[0] / total[1]
        finally:
            s.model.train()
    return model_fn
