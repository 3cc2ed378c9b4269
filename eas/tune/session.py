"""What the stages of a tuning run share: the model with its adapters, the data, the search, the folder."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from eas.data.tasks import TaskData
from eas.model.tokenizer import Tokenizer
from eas.search import BanditSearch, SkipTarget
from eas.tune.batches import Batches
from eas.tune.config import TuneConfig
from eas.tune.run_folder import RunFolder
from eas.tune.train import lr_at, make_optimizer, train_step


def stage_steps(cfg: TuneConfig, k: int, steps_per_epoch: int, stage: str) -> int:
    """Optimizer steps of the search (warm-up included; 0 without a search) or of the fine-tune."""
    if stage == "search":
        if k == 0 or cfg.skip_set is not None:
            return 0
        return round((cfg.warmup_epochs + cfg.search_epochs) * steps_per_epoch)
    return max(1, round(cfg.finetune_epochs * steps_per_epoch))


@dataclass
class Session:
    cfg: TuneConfig
    device: torch.device
    dtype: torch.dtype
    rank: int
    world: int
    model: torch.nn.Module              # a Lavin or Llava with adapters; only they train, in fp32
    tok: Tokenizer
    tok_path: Path
    task: TaskData
    k: int                              # units to skip
    batches: Batches
    search: BanditSearch
    target: SkipTarget
    dropout: torch.Generator            # every adapter's dropout draws from it
    initial: dict                       # the fresh adapters, for a fine-tune that starts from them
    folder: RunFolder
    merged_dtype: torch.dtype           # the base checkpoint's own dtype, which merged.pt is stored in
    timings: dict = field(default_factory=dict)
    optimizer: torch.optim.Optimizer | None = None
    static_refused: str | None = None   # why the static merge was refused (a --merge dynamic run)

    @property
    def lead(self) -> bool:
        return self.rank == 0

    @property
    def n_units(self) -> int:
        return self.model.llama.cfg.n_layers

    def steps(self, stage: str) -> int:
        return stage_steps(self.cfg, self.k, self.batches.epoch_steps(stage), stage)

    def chosen(self) -> tuple[int, ...]:
        """The skip set the fine-tune trains and the merge removes."""
        if self.cfg.skip_set is not None:
            return tuple(sorted(self.cfg.skip_set))
        return self.search.top_k(self.k) if self.k else ()

    def seed_dropout(self) -> None:
        """Per-rank dropout streams, a function of --seed alone."""
        self.dropout.manual_seed(self.cfg.seed + 1000 * self.rank)

    def start_optimizer(self, saved: dict | None) -> None:
        scales = {} if self.cfg.projector_lr is None else {self.model.PROJECTOR + ".": self.cfg.projector_lr / self.cfg.lr}
        self.optimizer = make_optimizer(self.model, self.cfg.lr, self.cfg.weight_decay, lr_scales=scales)
        if saved is not None and saved.get("optimizer") is not None:
            self.optimizer.load_state_dict(saved["optimizer"])

    def train_step(self, stage: str, step: int, total: int, batches: list | None = None) -> float | None:
        """One optimizer step on `batches` (default: the step's own, Batches.train); None (and no
        update) when no image of the whole batch could be read."""
        batches = self.batches.train(stage, step) if batches is None else batches
        if batches is None:
            return None
        warmup = min(total, round(self.cfg.lr_warmup_epochs * self.batches.epoch_steps(stage)))
        return train_step(self.model, self.batches.loss, self.optimizer, batches, step,
                          lambda s: lr_at(s, total, warmup, self.cfg.lr))

    def bar(self, total: int, start: int, desc: str) -> tqdm:
        return tqdm(total=total, initial=start, desc=desc, disable=not self.lead, dynamic_ncols=True)
