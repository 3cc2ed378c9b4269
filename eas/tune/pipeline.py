"""`python run.py tune`: the whole EAS recipe in one resumable command (eas_method.md §3-4).

Stages: (1) super-net warm-up on random sub-networks, (2) bandit search, (3) top-K skip set,
(4) fine-tune of the chosen sub-network, (5) test accuracy of the unmerged, static- and
dynamic-merged forms, (6) merged.pt + report. Under torchrun every rank trains on its shard of
each global batch; gradients and losses are summed across ranks (eas.train.train_step), rank 0
draws every sub-network and broadcasts it, and the preferences are all-reduced.

Everything that decides a number is a function of --seed and the step: batches come from a
per-(stage, epoch) permutation, sub-networks from the search's own generator, dropout from the
saved RNG states. So `--resume` after an interruption, even kill -9, continues exactly where the
last checkpoint left off.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from eas.adapters.calibrate import calibrate_routes, clear_routes
from eas.io.checkpoint import CheckpointError
from eas.adapters.attach import UNITS, EASConfig, add_adapters, freeze_routers, mark_trainable, set_skipped
from eas.model.lavin import IGNORE_INDEX
from eas.adapters.merge import MODES, merge
from eas.io.merged import save_merged
from eas.adapters.params import trainable_report
from eas.search import BanditSearch, bandit_round, broadcast_subnets, skip_target
from eas.data.tasks import DataWarning, load_pixels, load_task
from eas.tune.train import (TrainState, autocast_context, load_checkpoint, load_trainable_state, lr_at, make_optimizer,
                    save_checkpoint, train_step, trainable_state_dict)

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "weights" / "tiny"
STAGES = ("search", "finetune", "evaluate", "done")
# Changing these between an interrupted run and its --resume does not change the result.
RESUME_FREE = ("resume", "save_minutes", "save_every", "eval_batch_size")


@dataclass
class TuneConfig:
    task: str = "aid"
    data_root: str | None = None
    setting: str = "20"                 # AID: the paper's 20 % or 50 % train split
    base: str = str(TINY)               # own-format Lavin folder (weights/convert_*.py write one)
    llama: str | None = None            # or: a Meta/HF LLaMA folder ...
    clip: str | None = None             # ... plus a CLIP file, assembled LaVIN-style
    out: str = "runs/aid"
    cache_dir: str = str(ROOT / ".cache")
    skip: int | None = None             # K units skipped; default a quarter of the layers
    skip_set: tuple[int, ...] | None = None  # fixed set: no search (ablations, random baselines)
    unit: str = "attention"
    warmup_epochs: float = 3.0          # super-net on random sub-networks
    search_epochs: float = 3.0          # bandit updates every nas_every steps
    finetune_epochs: float = 20.0
    nas_every: int = 2
    candidates: int = 3                 # M sub-networks scored per update
    beta: float = 10.0
    search_lr: float = 2.0
    val_batch: int = 32
    batch_size: int = 16                # global, over ranks and accumulation
    accum: int = 1
    lr: float = 4e-3
    weight_decay: float = 0.02
    lr_warmup_epochs: float = 1.0
    adapter_dim: int = 8
    skip_dim: int = 32
    dropout: float = 0.1
    warm_start: bool = False
    grad_checkpointing: bool = False
    merge: str = "static"               # the form written to merged.pt; static also tunes with fixed routers
    eval_batch_size: int = 64
    max_test: int | None = None
    synthetic_per_class: int = 100
    seed: int = 0
    resume: bool = False
    save_minutes: float = 5.0
    save_every: int = 0                 # also checkpoint every N steps (0: by time only)


def tune(cfg: TuneConfig) -> dict:
    """Run (or resume) the recipe; returns the report (rank 0) or {} (other ranks)."""
    return Tuner(cfg).run()


class Tuner:
    def __init__(self, cfg: TuneConfig):
        self.cfg = cfg
        self.rank, self.world = _init_distributed()
        self.device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available()
                                   else "cpu")
        self.out = Path(cfg.out)
        self.state_path = self.out / "state.pt"
        self.lead = self.rank == 0
        if cfg.merge not in MODES:
            raise SystemExit(f"error: --merge {cfg.merge!r}: choose one of {MODES}")
        if cfg.unit not in UNITS:
            raise SystemExit(f"error: --unit {cfg.unit!r}: choose one of {UNITS}")
        if self.lead:
            if self.state_path.exists() and not cfg.resume:
                raise SystemExit(f"error: {self.state_path} exists from an earlier run; pass --resume to continue "
                                 f"it, or choose another --out")
            self.out.mkdir(parents=True, exist_ok=True)
        self.skipped_files: list[str] = []
        self.skipped_batches: list[str] = []  # batches none of whose images could be read
        self.timings: dict[str, float] = {}
        self._last_save = time.monotonic()
        self._stop: str | None = None
        self._handlers = {}
        if self.lead and threading.current_thread() is threading.main_thread():
            self._handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        self.model, self.tok, self.tok_path = _load_base(cfg, self.device)
        llama = self.model.llama
        self.n_units = llama.cfg.n_layers
        self.k = self._skip_count()
        with _rank_zero_first(self.lead):
            self.task = load_task(cfg.task, cfg.data_root, cache_dir=cfg.cache_dir, setting=cfg.setting,
                                  seed=cfg.seed, image_size=self.model.cfg.vision.image_size,
                                  synthetic_per_class=cfg.synthetic_per_class)
        if len(self.task.train) < cfg.batch_size or cfg.batch_size < self.world * cfg.accum:
            raise SystemExit(f"error: --batch-size {cfg.batch_size} must be at least ranks x accum "
                             f"({self.world} x {cfg.accum}) and at most the {len(self.task.train)} training examples")
        torch.manual_seed(cfg.seed)  # identical fresh adapters on every rank
        add_adapters(self.model, EASConfig(adapter_dim=cfg.adapter_dim, skip_dim=cfg.skip_dim, dropout=cfg.dropout,
                                           unit=cfg.unit))
        mark_trainable(self.model)
        if cfg.merge == "static":
            freeze_routers(self.model)  # the static merge is then exact for the tuned model
        for p in self.model.parameters():
            if p.requires_grad:
                p.data = p.data.float()  # adapters train in fp32 next to a bf16 base
        llama.grad_checkpointing = cfg.grad_checkpointing
        self.initial = trainable_state_dict(self.model)
        self.target = skip_target(self.model, cfg.unit)
        self.search = BanditSearch(self.n_units, max(self.k, 1), beta=cfg.beta, lr=cfg.search_lr,
                                   generator=torch.Generator().manual_seed(cfg.seed))
        self.spe = max(1, len(self.task.train) // cfg.batch_size)  # optimizer steps per epoch
        self.log_file = self.out / "log.jsonl"
        self.train_state = TrainState()
        self._seed_dropout()

    # ----------------------------------------------------------------------------------- set-up
    def _seed_dropout(self):
        torch.manual_seed(self.cfg.seed + 1000 * self.rank)  # per-rank dropout streams

    def _on_signal(self, signum, frame):
        if self._stop is not None:  # a second Ctrl-C: stop now, losing only the unsaved steps
            raise KeyboardInterrupt
        self._stop = signal.Signals(signum).name
        print(f"\n{self._stop}: finishing the current step, then saving (press Ctrl-C again to stop at once)",
              flush=True)

    def _skip_count(self) -> int:
        cfg, n = self.cfg, self.n_units
        if cfg.skip_set is not None:
            bad = [i for i in cfg.skip_set if not 0 <= i < n]
            if bad or len(set(cfg.skip_set)) != len(cfg.skip_set):
                raise SystemExit(f"error: --skip-set {list(cfg.skip_set)} must be distinct layers in 0..{n - 1}")
            if cfg.skip is not None and cfg.skip != len(cfg.skip_set):
                raise SystemExit(f"error: --skip {cfg.skip} disagrees with --skip-set of {len(cfg.skip_set)} layers")
            return len(cfg.skip_set)
        k = n // 4 if cfg.skip is None else cfg.skip
        if not 0 <= k < n:
            raise SystemExit(f"error: --skip {k} must lie in 0..{n - 1} (the model has {n} layers)")
        return k

    def steps(self, stage: str) -> int:
        c = self.cfg
        if stage == "search":
            if self.k == 0 or c.skip_set is not None:
                return 0
            return round((c.warmup_epochs + c.search_epochs) * self.spe)
        return max(1, round(c.finetune_epochs * self.spe))

    # --------------------------------------------------------------------------------- run
    def run(self) -> dict:
        stage, step, saved = "search", 0, None
        if self.cfg.resume and self.state_path.exists():
            saved = self._restore()
            stage, step = saved["stage"], saved["step"]
        elif self.lead:
            self.log_file.write_text("")
            if self.cfg.resume:
                print(f"--resume: no checkpoint at {self.state_path}, starting afresh")
        if self.lead:
            self._announce()
        self.optimizer = None
        try:
            return self._run_stages(stage, step, saved)
        finally:
            for sig, handler in self._handlers.items():
                signal.signal(sig, handler)

    def _run_stages(self, stage: str, step: int, saved: dict | None) -> dict:
        if stage == "search":
            self._stage_search(step, saved)
            stage, step, saved = "finetune", 0, None
        if stage == "finetune":
            self._stage_finetune(step, saved)
        for sig, handler in self._handlers.items():  # evaluation is short: Ctrl-C simply stops it
            signal.signal(sig, handler)
        report = {}
        if self.lead:
            report = self._stage_evaluate()
        if self.world > 1:
            dist.barrier()
        return report

    def _announce(self):
        t, c = self.task, self.cfg
        print(f"task {t.label}: {len(t.train)} train / {len(t.val)} val / {len(t.test)} test examples from {t.source}")
        if t.synthetic:
            print("NOTE: SYNTHETIC data (procedurally drawn AID-like scenes, not the real AID); every number "
                  "below is on synthetic data.")
        plan = (f"fixed skip set {list(c.skip_set)}" if c.skip_set is not None else
                f"search K={self.k} of {self.n_units} {c.unit} units" if self.k else "no skipping (adapter baseline)")
        print(f"plan: {plan}; {self.steps('search')} search + {self.steps('finetune')} fine-tune steps of "
              f"{c.batch_size} on {self.world} process(es), device {self.device}")

    # ------------------------------------------------------------------------- stage: search
    def _stage_search(self, step: int, saved: dict | None):
        total = self.steps("search")
        if total == 0:
            return
        warm = round(self.cfg.warmup_epochs * self.spe)
        self.optimizer = self._optimizer(saved)
        t0 = time.monotonic() - (saved or {}).get("stage_time", 0.0)
        bar = self._bar(total, step, "search")
        self.model.train()
        for step in range(step, total):
            subnet = broadcast_subnets([self.search.sample()])[0]
            set_skipped(self.model.llama, subnet)
            loss = self._train_step("search", step, total)
            record = {"stage": "search", "step": step, **self._loss_record(loss), "skip": list(subnet)}
            if step >= warm and (step - warm) % self.cfg.nas_every == 0:
                # Round r reads the r-th validation batch; r counts rounds due, skipped ones included,
                # so an unreadable batch is passed over, not read again at every later round.
                val_batch = self._val_batch((step - warm) // self.cfg.nas_every, step)
                if val_batch is None:
                    record["bandit_skipped"] = True
                else:
                    subnets, losses = bandit_round(self.search, self.target, self._val_loss(val_batch),
                                                   m=min(self.cfg.candidates, math.comb(self.n_units, self.k)))
                    record.update(candidates=[list(s) for s in subnets], val_losses=[round(x, 5) for x in losses],
                                  scores=[round(x, 5) for x in self.search.scores.tolist()])
            self._log(record)
            bar.set_postfix(loss="skipped" if loss is None else f"{loss:.3f}",
                            phase="warm-up" if step < warm else "bandit")
            bar.update()
            self._maybe_save("search", step + 1, t0, final=step + 1 == total)
        bar.close()
        self.timings["search_s"] = time.monotonic() - t0

    def _val_batch(self, r: int, step: int):
        """This rank's share of the r-th bandit round's validation batch, () where that share has no
        readable image, or None on every rank when no rank has one (the round is then skipped)."""
        val = self.task.val
        n = min(len(val), self.cfg.val_batch)
        per_pass = len(val) // n
        order = _permutation(len(val), self.cfg.seed, "val", r // per_pass)
        start = (r % per_pass) * n
        chosen = [val[i] for i in order[start:start + n]]
        batch = self._prepare(chosen[self.rank::self.world])
        if not self._any_rank(bool(batch)):
            self._skip_batch(f"validation batch of bandit round {r} (search step {step}); round skipped", chosen)
            return None
        return batch

    def _val_loss(self, batch):
        """The reward's loss on one validation batch: dropout off, summed over ranks."""
        def model_fn():
            self.model.eval()
            try:
                total = torch.zeros(2, dtype=torch.float64, device=self.device)
                if batch:
                    with autocast_context(self.device):  # a bf16 base next to fp32 adapters, as in training
                        loss_sum, count = _loss_sum(self.model, batch)
                    total += torch.stack([loss_sum.double(), torch.tensor(float(count), device=self.device)])
                if self.world > 1:
                    dist.all_reduce(total)
                return total[0] / total[1]
            finally:
                self.model.train()
        return model_fn

    # ------------------------------------------------------------------------ stage: finetune
    def chosen(self) -> tuple[int, ...]:
        if self.cfg.skip_set is not None:
            return tuple(sorted(self.cfg.skip_set))
        return self.search.top_k(self.k) if self.k else ()

    def _stage_finetune(self, step: int, saved: dict | None):
        total = self.steps("finetune")
        skip = self.chosen()
        if step == 0:
            # The fine-tune of a skip set is a function of (seed, skip set) alone, whatever the search
            # before it drew: a searched set and the same set given by --skip-set train identically.
            # (Dropout alone moved one set's test accuracy by 5 points on synthetic AID.)
            self._seed_dropout()
            if not self.cfg.warm_start:
                load_trainable_state(self.model, self.initial, "initial adapters")  # fresh, as the authors do
        set_skipped(self.model.llama, skip)
        self.optimizer = self._optimizer(saved)
        t0 = time.monotonic() - (saved or {}).get("stage_time", 0.0)
        bar = self._bar(total, step, f"fine-tune skip={list(skip)}")
        self.model.train()
        for step in range(step, total):
            loss = self._train_step("finetune", step, total)
            self._log({"stage": "finetune", "step": step, **self._loss_record(loss)})
            bar.set_postfix(loss="skipped" if loss is None else f"{loss:.3f}")
            bar.update()
            self._maybe_save("finetune", step + 1, t0, final=step + 1 == total)
        bar.close()
        self.timings["finetune_s"] = time.monotonic() - t0

    # ------------------------------------------------------------------------ stage: evaluate
    @torch.no_grad()
    def _stage_evaluate(self) -> dict:
        from eas.tune.report import write_report
        t0 = time.monotonic()
        model, cfg = self.model.eval(), self.cfg
        skip = self.chosen()
        set_skipped(model.llama, skip)
        clear_routes(model)
        test = self.task.test[:cfg.max_test] if cfg.max_test else self.task.test
        forms = {"unmerged": model}
        forms["dynamic"] = merge(model, "dynamic")
        calibration = [self._prepare(self.task.train[i:i + cfg.eval_batch_size])
                       for i in range(0, min(len(self.task.train), 512), cfg.eval_batch_size)]
        calibration = [b for b in calibration if b]
        with autocast_context(self.device):
            calibrate_routes(model, calibration, forward=lambda m, b: m(*b))
        forms["static"] = merge(model, "static")
        clear_routes(model)
        predictions, results = {}, {}
        for name, net in forms.items():
            t = time.monotonic()
            examples, predictions[name] = self._predict(net, test, name)
            results[name] = {**self.task.score(predictions[name], examples), "seconds": round(time.monotonic() - t, 2)}
        shutil.copyfile(self.tok_path, self.out / "tokenizer.model")
        shipped = forms[cfg.merge]
        save_merged(shipped, self.out / "merged.pt", tokenizer="tokenizer.model")
        save_checkpoint(self.out / "adapters.pt", adapters=trainable_state_dict(model), skip_layers=list(skip),
                        config=dataclasses.asdict(cfg))
        with open(self.out / "predictions.jsonl", "w", encoding="utf-8") as f:
            for i, e in enumerate(examples):
                f.write(json.dumps({"image": str(e.image), "target": e.target,
                                    **{k: v[i] for k, v in predictions.items()}}) + "\n")
        self.timings["evaluate_s"] = time.monotonic() - t0
        report = {
            "task": self.task.name, "synthetic": self.task.synthetic, "data": self.task.source,
            "split": {"train": len(self.task.train), "val": len(self.task.val), "test": len(examples)},
            "skip_layers": list(skip), "k": self.k, "unit": cfg.unit, "n_units": self.n_units,
            "searched": self.steps("search") > 0,
            "preferences": [round(x, 6) for x in self.search.scores.tolist()],
            "importance_order": self.search.importance_order(),
            "trajectories": self.search.trajectories().tolist() if self.steps("search") else [],
            "accuracy": {k: v["accuracy"] for k, v in results.items()}, "results": results,
            "params": trainable_report(model), "router_constants": forms["static"].merge_info["router_constants"],
            "merged": {"path": str(self.out / "merged.pt"), "mode": cfg.merge},
            "kv_cache_share": len(shipped.llama.cfg.attention_layers) / self.n_units,
            "timings_s": {k: round(v, 1) for k, v in self.timings.items()},
            "skipped_files": self.skipped_files, "skipped_batches": self.skipped_batches,
            "warnings": self.task.warnings, "world_size": self.world,
            "config": dataclasses.asdict(cfg),
        }
        write_report(report, self.out)
        self._save("done", 0, 0.0, collective=False)
        return report

    def _predict(self, net, examples, name: str):
        kept, out = [], []
        bs = self.cfg.eval_batch_size
        for i in tqdm(range(0, len(examples), bs), desc=f"test {name}", leave=False, disable=not self.lead):
            part, pixels = load_pixels(examples[i:i + bs], self.model.cfg.vision.image_size, self.skipped_files)
            if not part:
                continue
            batch = net.build_batch(self.tok, [(e.prompt, None, e.image is not None) for e in part]).to(self.device)
            with autocast_context(self.device):
                tokens = net.generate(batch, None if pixels is None else pixels.to(self.device),
                                      self.task.max_new_tokens, eos_id=self.tok.eos_id)
            kept += part
            out += [self.tok.decode(t) for t in tokens]
        return kept, out

    # ------------------------------------------------------------------------------ plumbing
    def _lr_warmup(self, total: int) -> int:
        return min(total, round(self.cfg.lr_warmup_epochs * self.spe))

    def _optimizer(self, saved: dict | None):
        opt = make_optimizer(self.model, self.cfg.lr, self.cfg.weight_decay)
        if saved is not None and saved.get("optimizer") is not None:
            opt.load_state_dict(saved["optimizer"])
        return opt

    def _batch_indices(self, stage: str, step: int) -> list[int]:
        """The global batch of a training step: indices into the training split."""
        bs = self.cfg.batch_size
        order = _permutation(len(self.task.train), self.cfg.seed, stage, step // self.spe)
        start = (step % self.spe) * bs
        return order[start:start + bs]

    def _micro_batches(self, stage: str, step: int) -> list:
        mine = self._batch_indices(stage, step)[self.rank::self.world]
        per = math.ceil(len(mine) / self.cfg.accum)
        parts = [self._prepare([self.task.train[i] for i in mine[j:j + per]]) for j in range(0, len(mine), per)]
        return [p for p in parts if p]

    def _train_step(self, stage: str, step: int, total: int) -> float | None:
        """One optimizer step; None (and no update) when no image of the whole batch could be read."""
        batches = self._micro_batches(stage, step)
        if not self._any_rank(bool(batches)):
            self._skip_batch(f"training batch of {stage} step {step}; no update",
                             [self.task.train[i] for i in self._batch_indices(stage, step)])
            return None
        return train_step(self.model, _loss_sum, self.optimizer, batches, step,
                          lambda s: lr_at(s, total, self._lr_warmup(total), self.cfg.lr))

    @staticmethod
    def _loss_record(loss: float | None) -> dict:
        return {"loss": None, "skipped_batch": True} if loss is None else {"loss": round(loss, 5)}

    def _any_rank(self, flag: bool) -> bool:
        """Whether `flag` holds on some rank (every rank must call this at the same point)."""
        if self.world == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t)
        return bool(t.item())

    def _skip_batch(self, what: str, examples) -> None:
        """Count and announce a batch whose every image was unreadable (the files are in skipped_files)."""
        files = [str(e.image) for e in examples]
        shown = ", ".join(files[:3]) + (f", ... ({len(files)} in all)" if len(files) > 3 else "")
        message = f"{what}: none of its images could be read ({shown})"
        self.skipped_batches.append(message)
        if self.lead:
            warnings.warn(f"skipped the {message}", DataWarning, stacklevel=3)

    def _prepare(self, examples):
        """-> (LavinBatch, pixels) on the device, or () when every image in it was unreadable."""
        kept, pixels = load_pixels(examples, self.model.cfg.vision.image_size, self.skipped_files)
        if not kept:
            return ()
        batch = self.model.build_batch(self.tok, [(e.prompt, e.target, e.image is not None) for e in kept])
        return batch.to(self.device), None if pixels is None else pixels.to(self.device)

    def _bar(self, total: int, start: int, desc: str):
        return tqdm(total=total, initial=start, desc=desc, disable=not self.lead, dynamic_ncols=True)

    def _log(self, record: dict):
        if self.lead:
            with open(self.log_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def _maybe_save(self, stage: str, step: int, t0: float, final: bool):
        """Checkpoint when due; after Ctrl-C or SIGTERM, checkpoint the finished step and stop."""
        c = self.cfg
        due = final or (c.save_every and step % c.save_every == 0) or \
            time.monotonic() - self._last_save > 60 * c.save_minutes
        flags = torch.tensor([float(due), float(self._stop is not None)])
        if self.world > 1:  # rank 0 decides, so every rank joins the same collectives
            flags = flags.to(self.device if dist.get_backend() == "nccl" else "cpu")
            dist.broadcast(flags, 0)
        due, stop = (bool(x) for x in flags.tolist())
        if due or stop:
            if final and stage == "search":
                stage, step = "finetune", 0
            self._save(stage, step, 0.0 if final else time.monotonic() - t0)
        if stop:
            raise SystemExit(f"interrupted ({self._stop or 'signal on rank 0'}): {stage} step {step} is saved in "
                             f"{self.state_path}; continue with the same command plus --resume")

    def _save(self, stage: str, step: int, stage_time: float, collective: bool = True):
        """Checkpoint; collective=False when rank 0 saves alone (after training, while the others wait)."""
        rng = self.train_state.capture().rng
        rngs = [None] * self.world
        if self.world > 1 and collective:
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng] * self.world
        if self.lead:
            fresh_stage = step == 0 and stage != "search"
            save_checkpoint(self.state_path, stage=stage, step=step, stage_time=stage_time,
                            config=_comparable(self.cfg), world_size=self.world, rngs=rngs,
                            adapters=trainable_state_dict(self.model),
                            optimizer=None if fresh_stage else self.optimizer.state_dict(),
                            search=self.search.state_dict(), timings=dict(self.timings),
                            log_bytes=self.log_file.stat().st_size, skipped_files=list(self.skipped_files),
                            skipped_batches=list(self.skipped_batches))
        self._last_save = time.monotonic()

    def _restore(self) -> dict:
        saved = load_checkpoint(self.state_path)
        mine, theirs = _comparable(self.cfg), saved["config"]
        diff = sorted(k for k in mine if mine[k] != theirs.get(k))
        if diff:
            raise SystemExit(f"error: cannot --resume {self.state_path}: it was started with different settings: "
                             + ", ".join(f"{k}={theirs.get(k)!r} (now {mine[k]!r})" for k in diff))
        load_trainable_state(self.model, saved["adapters"], str(self.state_path))
        self.search.load_state_dict(saved["search"])
        self.timings.update(saved["timings"])
        self.skipped_files[:] = saved["skipped_files"]
        self.skipped_batches[:] = saved.get("skipped_batches", [])  # absent from older checkpoints
        if saved["world_size"] == self.world:
            self.train_state.rng = saved["rngs"][self.rank]
            self.train_state.restore()
        else:
            warnings.warn(f"resuming {saved['world_size']}-process checkpoint with {self.world} processes: "
                          f"dropout streams restart, the run stays valid but is not bit-identical", RuntimeWarning)
        if self.lead:
            with open(self.log_file, "r+b") as f:
                f.truncate(saved["log_bytes"])  # forget what was logged after the checkpoint
            self._log({"resumed": saved["stage"], "step": saved["step"]})
            print(f"resumed {self.state_path}: stage {saved['stage']}, step {saved['step']}")
        if saved["stage"] == "done":
            saved = {**saved, "stage": "evaluate"}
        return saved


def _loss_sum(model, batch):
    """(summed next-token cross-entropy, number of supervised tokens) of one (LavinBatch, pixels)."""
    lavin_batch, pixels = batch
    logits = model(lavin_batch, pixels)
    labels = lavin_batch.labels
    total = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX,
                            reduction="sum")
    return total, int((labels != IGNORE_INDEX).sum())


def _permutation(n: int, seed: int, stage: str, epoch: int) -> list[int]:
    salt = STAGES.index(stage) if stage in STAGES else 7
    g = torch.Generator().manual_seed(seed * 1_000_003 + salt * 10_007 + epoch)
    return torch.randperm(n, generator=g).tolist()


def _comparable(cfg: TuneConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["skip_set"] = None if cfg.skip_set is None else list(cfg.skip_set)
    return {k: v for k, v in d.items() if k not in RESUME_FREE}


def _init_distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


class _rank_zero_first:
    """Rank 0 runs the block first (e.g. generates the synthetic data set), the others after it."""

    def __init__(self, lead: bool):
        self.lead = lead

    def __enter__(self):
        if not self.lead and dist.is_initialized():
            dist.barrier()

    def __exit__(self, *exc):
        if self.lead and dist.is_initialized():
            dist.barrier()
        return False


def _load_base(cfg: TuneConfig, device: torch.device):
    """-> (Lavin, Tokenizer, tokenizer path); the frozen base in bf16 on GPU, fp32 on CPU."""
    from eas.io.assemble import assemble_lavin
    from eas.io.checkpoint import load_model
    from eas.model.lavin import Lavin
    from eas.model.tokenizer import Tokenizer
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if cfg.llama or cfg.clip:
        if not (cfg.llama and cfg.clip):
            raise SystemExit("error: --llama and --clip go together (a LaVIN model needs both)")
        model, tok_path = assemble_lavin(cfg.llama, cfg.clip, dtype=dtype, device=device)
    else:
        base = Path(cfg.base)
        try:
            model = load_model(base, dtype=dtype, device=device)
        except CheckpointError as e:
            raise SystemExit(f"error: cannot load base model {base}: {e}") from e
        if not isinstance(model, Lavin):
            raise SystemExit(f"error: {base} holds a text-only LLaMA; tuning needs a LaVIN model "
                             f"(or pass --llama DIR --clip FILE)")
        tok_path = base / "tokenizer.model"
    if tok_path is None or not Path(tok_path).is_file():
        raise SystemExit(f"error: no tokenizer.model found next to the base model ({cfg.base if not cfg.llama else cfg.llama})")
    model.requires_grad_(False)
    warnings.simplefilter("always", DataWarning)
    return model, Tokenizer(tok_path), Path(tok_path)
