"""Stage 1-2: super-net warm-up on random sub-networks, then bandit updates.

--search lavin (eas_method.md §3.1): K units skipped from the start; after the warm-up, every
nas_every steps M sub-networks are scored on a validation batch, dropout off.
--search llava (§3.2): K grows from 1 during the warm-up (curriculum_k); after it, every nas_every
steps M sub-networks are scored on the current training batch in eval mode, before the step trains
on it. Under torchrun rank 0 draws every sub-network and broadcasts it, and the preferences are averaged.
"""
from __future__ import annotations

import math

import torch

from eas.adapters.attach import set_skipped
from eas.search import bandit_round, broadcast_subnets, curriculum_k
from eas.tune.checkpoints import Checkpointer
from eas.distributed import sum_over_ranks
from eas.tune.loop import loss_record, run_stage
from eas.tune.session import Session


def run_search(s: Session, ckpt: Checkpointer, start: int, saved: dict | None) -> None:
    if s.steps("search") == 0:
        return
    warm = round(s.cfg.warmup_epochs * s.batches.epoch_steps("search"))
    llava = s.cfg.search == "llava"

    def step_fn(step: int, total: int) -> tuple[dict, dict]:
        due = step >= warm and (step - warm) % s.cfg.nas_every == 0
        record, batches = {}, None
        if due and llava:
            batches = s.batches.train("search", step)
            record.update(_bandit_update(s, None if batches is None else _mean_loss(s, batches)))
        k = curriculum_k(s.k, step, warm) if llava else s.k
        subnet = broadcast_subnets([s.search.sample(k)])[0]
        set_skipped(s.model.llama, subnet)
        # an unreadable batch already read for the reward is not read (and reported) a second time
        loss = None if due and llava and batches is None else s.train_step("search", step, total, batches)
        record = {**loss_record(loss), "skip": list(subnet), **record}
        if due and not llava:
            batch = s.batches.val((step - warm) // s.cfg.nas_every, step)
            record.update(_bandit_update(s, None if batch is None else _mean_loss(s, [batch] if batch else [])))
        return record, {"loss": "skipped" if loss is None else f"{loss:.3f}",
                        "phase": "warm-up" if step < warm else "bandit"}

    run_stage(s, ckpt, "search", start, saved, f"search ({s.cfg.search} bandit)", step_fn)


def _bandit_update(s: Session, model_fn) -> dict:
    """One round of the bandit: score M distinct sub-networks with model_fn; None: no readable batch."""
    if model_fn is None:
        return {"bandit_skipped": True}
    m = min(s.cfg.candidates, math.comb(s.n_units, s.k))
    subnets, losses = bandit_round(s.search, s.target, model_fn, m=m)
    return {"candidates": [list(x) for x in subnets], "losses": [round(x, 5) for x in losses],
            "scores": [round(x, 5) for x in s.search.scores.tolist()]}


def _mean_loss(s: Session, parts: list):
    """The reward's loss on this rank's micro-batches (maybe none) of one batch: dropout off, the
    mean token loss over every rank's."""
    def model_fn():
        s.model.eval()
        try:
            total = torch.zeros(2, dtype=torch.float64, device=s.device)
            for batch in parts:
                loss, count = s.batches.loss(s.model, batch)
                total += torch.stack([loss.double(), torch.tensor(float(count), device=s.device)])
            sum_over_ranks(total)
            return total[0] / total[1]
        finally:
            s.model.train()
    return model_fn
