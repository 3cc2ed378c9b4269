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
    finetune_epochs: float | None = None  # None: arch_defaults (20; 10 for the LLaVA form of a narrow LLM)
    search: str | None = None           # the bandit: lavin (softmax, val batch) or llava (sigmoid, curriculum
                                        # on K); None: lavin, except llava for --recipe paper --arch llava
    nas_every: int | None = None        # bandit updates every N steps; None: SEARCH_DEFAULTS
    candidates: int | None = None       # M sub-networks scored per update; None: SEARCH_DEFAULTS
    beta: float | None = None           # policy inverse temperature; None: SEARCH_DEFAULTS
    search_lr: float | None = None      # bandit step size; None: SEARCH_DEFAULTS
    val_batch: int | None = None
    batch_size: int | None = None       # global, over ranks and accumulation
    accum: int = 1
    lr: float | None = None
    projector_lr: float | None = None   # the visual projector's; None: --lr (both recipes train it at the adapters' rate)
    weight_decay: float | None = None
    lr_warmup_epochs: float | None = None
    adapter_dim: int | None = None      # r_a; None: arch_defaults
    skip_dim: int | None = None         # r_s; None: arch_defaults
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
ARCH_FIELDS = ("adapter_dim", "skip_dim", "finetune_epochs")
# LLaVA-EAS's AID/Slake scripts: r_a = r_s = 128 on LLaVA-1.5, whose LLM is 4096 wide (eas_method.md §4.2).
LLAVA_WIDTH, LLAVA_LLM_DIM = 128, 4096
FINETUNE_EPOCHS = 20.0        # both recipes (§4.1, §4.2)
NARROW_LLAVA_FINETUNE = 10.0  # the LLaVA form of an LLM narrower than LLaVA-1.5's (arch_defaults)


def arch_defaults(arch: str, llm_dim: int) -> dict:
    """Adapter widths (r_a, r_s) and fine-tune epochs of `arch` on an LLM `llm_dim` wide: the one
    home of these defaults.

    lavin: LaVIN-EAS's r_a = 8, r_s = 32 (eas_method.md §1.1) and 20 fine-tune epochs, at every width.
    llava on LLaVA-1.5 (7B: 4096 wide, 13B: 5120): the scripts' r = 128 and 20 epochs.
    llava on a narrower LLM (the tiny base, dim 256):
    * r keeps the scripts' ratio r/dim = 128/4096 = 1/32 (an even r >= 2: the up-projection has 2
      groups), r = 8 on the tiny base. The scripts' 128 there trained 710,400 parameters, 10 % of
      the 7 M-parameter LLM (the recipe trains about 0.3 % of a 7B one); at 8 it trains 156,240,
      within 0.5 % of the LaVIN-style default on the same base (157,024), so the two wirings are
      compared at equal trainable capacity.
    * 10 fine-tune epochs, not 20: its sequences are ~4x LaVIN's (93 prompt slots of vicuna_v1 and
      64 patch tokens against LaVIN's 6 image and ~25 prompt slots). Measured on 2 CPU cores, the
      default job took 12 min 26 s with r = 128 and 20 epochs, 9 min 55 s with r = 8 and 12 epochs
      (search 192 s, fine-tune 235 s, evaluation 162 s); with 10 epochs, 9 min 32 s.
    """
    if arch == "lavin":
        return {"adapter_dim": 8, "skip_dim": 32, "finetune_epochs": FINETUNE_EPOCHS}
    if llm_dim >= LLAVA_LLM_DIM:
        return {"adapter_dim": LLAVA_WIDTH, "skip_dim": LLAVA_WIDTH, "finetune_epochs": FINETUNE_EPOCHS}
    r = max(2, 2 * round(LLAVA_WIDTH * llm_dim / LLAVA_LLM_DIM / 2))
    return {"adapter_dim": r, "skip_dim": r, "finetune_epochs": NARROW_LLAVA_FINETUNE}


def defaults_note(cfg: TuneConfig, llm_dim: int) -> str:
    """The widths and fine-tune epochs a run used and where they came from, for its report."""
    used = f"r_a = {cfg.adapter_dim}, r_s = {cfg.skip_dim}, {cfg.finetune_epochs:g} fine-tune epochs"
    defaults = arch_defaults(cfg.arch, llm_dim)
    if any(getattr(cfg, k) != v for k, v in defaults.items()):
        return f"{used} (set by flags; the {cfg.arch} defaults here: " + \
            ", ".join(f"{k} {v:g}" for k, v in defaults.items()) + ")"
    if cfg.arch == "lavin":
        return f"{used} (LaVIN-EAS's)"
    if llm_dim >= LLAVA_LLM_DIM:
        return f"{used} (LLaVA-EAS scripts')"
    return (f"{used} (LLaVA-EAS's r = {LLAVA_WIDTH} x {llm_dim}/{LLAVA_LLM_DIM} and a shorter fine-tune: "
            f"the defaults of an LLM narrower than LLaVA-1.5's, eas.tune.config.arch_defaults)")


SEARCHES = ("lavin", "llava")
# The two bandits (eas_method.md §3.1, §3.2). lavin: M = 3, step 2, softmax(10 s); updates every 2 steps
# here (the recipe's 10 micro-steps are for epochs of thousands of steps). llava: M = 5 every 3 steps,
# step 1, sigmoid(s).
SEARCH_DEFAULTS = {"lavin": {"nas_every": 2, "candidates": 3, "beta": 10.0, "search_lr": 2.0},
                   "llava": {"nas_every": 3, "candidates": 5, "beta": 1.0, "search_lr": 1.0}}


SEARCH_FIELDS = tuple(SEARCH_DEFAULTS["lavin"])
# Fields a flag may leave None: filled once the base is known (with_defaults), or --lr for projector_lr.
DEFERRED = (*ARCH_FIELDS, *RECIPE_FIELDS, *SEARCH_FIELDS, "projector_lr", "search")


def with_defaults(cfg: TuneConfig, arch: str, llm_dim: int) -> TuneConfig:
    """cfg with `arch` and every field the flags left unset filled in, then checked again, complete.

    Precedence: flags, then the architecture's widths and fine-tune epochs (arch_defaults), then the
    --recipe's schedule (eas/tune/recipes.py), then the --search variant's bandit settings.
    """
    search = cfg.search or ("llava" if cfg.recipe == "paper" and arch == "llava" else "lavin")
    fills = {**SEARCH_DEFAULTS[search], **recipe_values(cfg.recipe, arch), **arch_defaults(arch, llm_dim)}
    unset = {k: v for k, v in fills.items() if getattr(cfg, k) is None}
    cfg = dataclasses.replace(cfg, arch=arch, search=search, **unset)
    validate(cfg)
    return cfg


COUNTS = ("nas_every", "candidates", "val_batch", "batch_size", "accum", "adapter_dim", "skip_dim",
          "eval_batch_size", "synthetic_per_class")
EPOCHS = ("warmup_epochs", "search_epochs", "finetune_epochs", "lr_warmup_epochs")
CHOICES = {"recipe": RECIPES, "task": TASKS, "search": (None, *SEARCHES), "unit": UNITS, "merge": MODES, "dtype": (None, *DTYPES), "arch": (None, *ARCHS)}


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
    unset = {name for name in DEFERRED if getattr(cfg, name) is None}  # filled once the base is known
    for name in (n for n in COUNTS if n not in unset):
        value = getattr(cfg, name)
        _require(isinstance(value, int) and value >= 1, name, value, "a whole number >= 1")
    for name in (n for n in EPOCHS if n not in unset):
        value = getattr(cfg, name)
        _require(math.isfinite(value) and value >= 0, name, value, "a finite number of epochs >= 0")
    for name in (n for n in ("lr", "projector_lr", "search_lr", "beta", "save_minutes") if n not in unset):
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

