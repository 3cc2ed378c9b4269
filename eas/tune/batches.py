"""The examples each step reads, decoded on the device, and their loss.

Batch order is a function of (--seed, stage, epoch) alone, so a resumed run reads what the
interrupted one would have. The search trains on the train split (its reward reads the val slice);
the fine-tune trains on train + val, the whole training part of the data set, as the paper's
fine-tune does (AID has no val split of its own: ours is carved out of the training images). A batch none of whose images can be read is skipped on every rank,
counted and named; one unreadable file drops only its example.
"""
from __future__ import annotations

import math
import warnings

import torch

from eas.data import DataWarning
from eas.data.tasks import TaskData, load_pixels
from eas.model.image import pixel_loader
from eas.model.lavin import IGNORE_INDEX, lm_loss
from eas.distributed import any_rank
from eas.tune.train import autocast_context

# Which permutation each stage reads: changing a salt changes every run's batch order.
SALTS = {"search": 0, "finetune": 1, "val": 7}


def permutation(n: int, seed: int, stage: str, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + SALTS[stage] * 10_007 + epoch)
    return torch.randperm(n, generator=g).tolist()


def loss_sum(model, batch) -> tuple[torch.Tensor, int]:
    """(summed next-token cross-entropy, number of supervised tokens) of one (LavinBatch, pixels)."""
    lavin_batch, pixels = batch
    logits = model(lavin_batch, pixels)
    labels = lavin_batch.labels
    return lm_loss(logits, labels, "sum"), int((labels != IGNORE_INDEX).sum())


class Batches:
    """This rank's share of every training and validation batch of a run."""

    def __init__(self, task: TaskData, model, tok, *, device: torch.device, dtype: torch.dtype, seed: int,
                 batch_size: int, accum: int, val_batch: int, rank: int, world: int):
        self.task, self.model, self.tok = task, model, tok
        self.device, self.dtype, self.seed = device, dtype, seed
        self.batch_size, self.accum, self.val_batch = batch_size, accum, val_batch
        self.rank, self.world = rank, world
        self.pools = {"search": list(task.train), "finetune": list(task.train) + list(task.val)}
        self.skipped_files: list[str] = []
        self.skipped_batches: list[str] = []

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        with autocast_context(self.device, self.dtype):
            return loss_sum(model, batch)

    def prepare(self, examples):
        """-> (LavinBatch, pixels) on the device, or () when every image in it was unreadable."""
        kept, pixels = load_pixels(examples, self.model.cfg.vision.image_size, self.skipped_files,
                                   pixel_loader(self.model.cfg))
        if not kept:
            return ()
        batch = self.model.build_batch(self.tok, [(e.prompt, e.target, e.image is not None) for e in kept])
        return batch.to(self.device), None if pixels is None else pixels.to(self.device)

    def epoch_steps(self, stage: str) -> int:
        """Optimizer steps in one epoch of `stage` (search or finetune)."""
        return max(1, len(self.pools[stage]) // self.batch_size)

    def indices(self, stage: str, step: int) -> list[int]:
        """The global batch of a training step: indices into the stage's pool (self.pools)."""
        per_epoch = self.epoch_steps(stage)
        order = permutation(len(self.pools[stage]), self.seed, stage, step // per_epoch)
        start = (step % per_epoch) * self.batch_size
        return order[start:start + self.batch_size]

    def train(self, stage: str, step: int) -> list | None:
        """This rank's micro-batches of a training step, or None on every rank when no rank has any."""
        pool = self.pools[stage]
        mine = self.indices(stage, step)[self.rank::self.world]
        per = math.ceil(len(mine) / self.accum)
        parts = [self.prepare([pool[i] for i in mine[j:j + per]]) for j in range(0, len(mine), per)]
        parts = [p for p in parts if p]
        if not any_rank(bool(parts)):
            self._skip(f"training batch of {stage} step {step}; no update",
                       [pool[i] for i in self.indices(stage, step)])
            return None
        return parts

    def val(self, r: int, step: int):
        """This rank's share of the r-th bandit round's validation batch, () where that share has no
        readable image, or None on every rank when no rank has one (the round is then skipped).

        r counts rounds due, skipped ones included, so an unreadable batch is passed over, not
        read again at every later round."""
        val = self.task.val
        n = min(len(val), self.val_batch)
        per_pass = len(val) // n
        order = permutation(len(val), self.seed, "val", r // per_pass)
        start = (r % per_pass) * n
        chosen = [val[i] for i in order[start:start + n]]
        batch = self.prepare(chosen[self.rank::self.world])
        if not any_rank(bool(batch)):
            self._skip(f"validation batch of bandit round {r} (search step {step}); round skipped", chosen)
            return None
        return batch

    def _skip(self, what: str, examples) -> None:
        """Count and announce a batch whose every image was unreadable (the files are in skipped_files)."""
        files = [str(e.image) for e in examples]
        shown = ", ".join(files[:3]) + (f", ... ({len(files)} in all)" if len(files) > 3 else "")
        message = f"{what}: none of its images could be read ({shown})"
        self.skipped_batches.append(message)
        if self.rank == 0:
            warnings.warn(f"skipped the {message}", DataWarning, stacklevel=3)
