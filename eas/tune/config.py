"""The settings of `run.py tune` (one --flag per field) and their checks, made before any work starts."""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from eas.adapters.attach import UNITS
from eas.adapters.merge import MODES
from eas.data.aid import PAPER_TRAIN_FRACTIONS
from eas.data.tasks import TASKS
from eas.errors import UsageError
from eas.tune.recipes import FIELDS as RECIPE_FIELDS, RECIPES, recipe_values

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "weights" / "tiny"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class TuneConfig:
    task: str = "aid"
    data_root: str | None = None
    setting: str = "20"                 # AID: the paper's 20 % or 50 % train split
    base: str = str(TINY)               # own-format Lavin/Llava folder, or a LLaVA-1.5 release folder
    llama: str | None = None            # or: a Meta/HF LLaMA folder ...
    clip: str | None = None             # ... plus a CLIP file or folder (also: an original LLaVA's tower)
    arch: str | None = None             # lavin or llava wiring; None: the base's own (a bare LLaMA: lavin)
    out: str | None = None              # run folder; None: runs/<task>
    cache_dir: str = str(ROOT / ".cache")
    device: str | None = None           # None: cuda:LOCAL_RANK when CUDA is available, else cpu
    dtype: str | None = None            # of the frozen base; None: bfloat16 on CUDA, float32 on CPU
    skip: int | None = None             # K units skipped; default a quarter of the layers
    skip_set: tuple[int, ...] | None = None  # fixed set: no search (ablations, random baselines)
    unit: str = "attention"
    recipe: str = "demo"                # fills the schedule fields below left None (eas/tune/recipes.py)
    warmup_epochs: float | None = None  # super-net on random sub-networks
    search_epochs: float | None = None  # bandit updates every nas_every steps
    finetune_epochs: float | None = None
    nas_every: int | None = None
    candidates: int | None = None       # M sub-networks scored per update
    beta: float = 10.0
    search_lr: float | None = None
    val_batch: int | None = None
    batch_size: int | None = None       # global, over ranks and accumulation
    accum: int = 1
    lr: float | None = None
    weight_decay: float | None = None
    lr_warmup_epochs: float | None = None
    adapter_dim: int | None = None      # r_a; None: ARCH_DEFAULTS
    skip_dim: int | None = None         # r_s; None: ARCH_DEFAULTS
    dropout: float = 0.1
    warm_start: bool = False
    grad_checkpointing: bool = False
    oracle: bool = False                # after the search: skip-one / greedy oracle -> oracle.json
    merge: str = "static"               # the form written to merged.pt; static also tunes with fixed routers
    eval_batch_size: int = 64
    max_test: int | None = None
    synthetic_per_class: int = 100
    seed: int = 0
    resume: bool = False
    save_minutes: float = 5.0
    save_every: int = 0                 # also checkpoint every N steps (0: by time only)

    @property
    def run_dir(self) -> Path:
        return Path(self.out) if self.out is not None else Path("runs") / self.task


ARCHS = ("lavin", "llava")
# Adapter widths of each recipe: LaVIN-EAS (eas_method.md §1.1) and LLaVA-EAS's AID/Slake scripts (§4.2).
ARCH_DEFAULTS = {"lavin": {"adapter_dim": 8, "skip_dim": 32}, "llava": {"adapter_dim": 128, "skip_dim": 128}}


def with_arch_defaults(cfg: TuneConfig, arch: str) -> TuneConfig:
    """cfg with `arch`, its adapter widths and its recipe's schedule filled in where the flags left
    them unset; checked again, now complete."""
    defaults = {**ARCH_DEFAULTS[arch], **recipe_values(cfg.recipe, arch)}
    unset = {k: v for k, v in defaults.items() if getattr(cfg, k) is None}
    cfg = dataclasses.replace(cfg, arch=arch, **unset)
    validate(cfg)
    return cfg


COUNTS = ("nas_every", "candidates", "val_batch", "batch_size", "accum", "adapter_dim", "skip_dim",
          "eval_batch_size", "synthetic_per_class")
EPOCHS = ("warmup_epochs", "search_epochs", "finetune_epochs", "lr_warmup_epochs")
CHOICES = {"recipe": RECIPES, "task": TASKS, "unit": UNITS, "merge": MODES, "dtype": (None, *DTYPES), "arch": (None, *ARCHS)}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _require(ok: bool, name: str, value, expected: str) -> None:
    if not ok:
        raise UsageError(f"{_flag(name)} {value!r}: expected {expected}")


def validate(cfg: TuneConfig) -> None:
    """Refuse every setting that would fail later or run something other than what was asked."""
    for name, options in CHOICES.items():
        value = getattr(cfg, name)
        _require(value in options, name, value, "one of " + ", ".join(o for o in options if o))
    unset = {name for name in (*ARCH_DEFAULTS["lavin"], *RECIPE_FIELDS) if getattr(cfg, name) is None}
    for name in (n for n in COUNTS if n not in unset):  # the unset ones: the architecture's and recipe's, once the base is known
        value = getattr(cfg, name)
        _require(isinstance(value, int) and value >= 1, name, value, "a whole number >= 1")
    for name in (n for n in EPOCHS if n not in unset):
        value = getattr(cfg, name)
        _require(math.isfinite(value) and value >= 0, name, value, "a finite number of epochs >= 0")
    for name in (n for n in ("lr", "search_lr", "beta", "save_minutes") if n not in unset):
        value = getattr(cfg, name)
        _require(math.isfinite(value) and value > 0, name, value, "a finite number > 0")
    if "weight_decay" not in unset:
        _require(math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0, "weight_decay", cfg.weight_decay,
                 "a finite number >= 0")
    _require(cfg.setting.rstrip("%") in PAPER_TRAIN_FRACTIONS, "setting", cfg.setting,
             "one of " + ", ".join(PAPER_TRAIN_FRACTIONS) + " (% of AID for training)")
    _require(0 <= cfg.dropout < 1, "dropout", cfg.dropout, "a probability in [0, 1)")
    _require(cfg.save_every >= 0, "save_every", cfg.save_every, "a number of steps >= 0 (0: by time only)")
    _require(cfg.max_test is None or cfg.max_test >= 1, "max_test", cfg.max_test, "a number of examples >= 1")
    _require(cfg.skip is None or cfg.skip >= 0, "skip", cfg.skip, "a number of units >= 0")
    _validate_skip_set(cfg)
    if cfg.oracle and (cfg.skip_set is not None or cfg.skip == 0):
        raise UsageError("--oracle judges a search's super-network: drop it with --skip 0 or --skip-set")
    if cfg.llama and not cfg.clip:
        raise UsageError("--llama needs --clip (the vision tower of the LaVIN or LLaVA model to assemble)")
    if cfg.task != "aid" and cfg.data_root is None:
        raise UsageError(f"--task {cfg.task} needs --data-root (only AID has a synthetic stand-in)")
    resolve_device(cfg)


def _validate_skip_set(cfg: TuneConfig) -> None:
    if cfg.skip_set is None:
        return
    layers = list(cfg.skip_set)
    _require(len(layers) > 0, "skip_set", ",".join(map(str, layers)), "at least one layer")
    _require(len(set(layers)) == len(layers) and min(layers) >= 0, "skip_set", ",".join(map(str, layers)),
             "distinct layer numbers >= 0")
    if cfg.skip is not None and cfg.skip != len(layers):
        raise UsageError(f"--skip {cfg.skip} disagrees with --skip-set {','.join(map(str, layers))} "
                         f"({len(layers)} layers)")


def check_against_model(cfg: TuneConfig, n_layers: int) -> int:
    """The number K of units to skip, once the base's depth is known."""
    if cfg.skip_set is not None:
        _require(max(cfg.skip_set) < n_layers, "skip_set", ",".join(map(str, cfg.skip_set)),
                 f"layers in 0..{n_layers - 1} (the model has {n_layers} layers)")
        return len(cfg.skip_set)
    k = n_layers // 4 if cfg.skip is None else cfg.skip
    _require(k < n_layers, "skip", k, f"a number in 0..{n_layers - 1} (the model has {n_layers} layers)")
    return k


def resolve_device(cfg: TuneConfig) -> torch.device:
    """The device of this process: under torchrun, a bare `cuda` means this rank's GPU."""
    local = int(os.environ.get("LOCAL_RANK", 0))
    if cfg.device is None:
        return torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(cfg.device)
    except (RuntimeError, ValueError) as e:
        raise UsageError(f"--device {cfg.device!r}: not a device (e.g. cpu, cuda, cuda:1)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {cfg.device}: CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {cfg.device}: expected cpu or cuda[:N]")
    return torch.device("cuda", local) if device.type == "cuda" and device.index is None else device


def resolve_dtype(cfg: TuneConfig, device: torch.device) -> torch.dtype:
    if cfg.dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[cfg.dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
