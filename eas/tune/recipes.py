"""Named recipes: the training schedule `run.py tune --recipe NAME` starts from; explicit flags override.

demo   the CPU demo's defaults: a short, steep schedule that fits the tiny base into minutes on
       2 cores. NOT the paper's recipe; its numbers are not the paper's setting.
paper  the authors' values for real 7B runs on GPUs (eas_method.md §3-4): LaVIN-EAS (§4.1, §3.1)
       for --arch lavin, LLaVA-EAS's AID scripts (§4.2, §3.2) for --arch llava.

Step counts are optimizer steps (the authors count some in micro-batches; converted below).
Fine-tune epochs and adapter widths live in eas.tune.config.arch_defaults (20 epochs in both papers'
recipes); the bandit's settings default per --search variant (config.SEARCH_DEFAULTS), and the paper
recipe sets the ones its scripts give.
"""
from __future__ import annotations

RECIPES = ("demo", "paper")

# Fields a recipe sets; a TuneConfig leaves them None until the base's architecture is known.
DEMO = {"warmup_epochs": 3.0, "search_epochs": 3.0, "val_batch": 32, "batch_size": 16, "lr": 4e-3,
        "weight_decay": 0.02, "lr_warmup_epochs": 1.0}

PAPER = {
    # LaVIN-EAS: 5 random-subnet + 5 bandit epochs, M = 3 sub-networks every 10 steps, bandit lr 2;
    # batch 4 x accum 4 x 2 GPUs = 32 at lr 9e-3 x 32/256 = 1.125e-3, 2-epoch LR warm-up, wd 0.02;
    # reward batch 16 per GPU x 2; fine-tune 20 epochs.
    "lavin": {"warmup_epochs": 5.0, "search_epochs": 5.0, "nas_every": 10,
              "candidates": 3, "search_lr": 2.0, "val_batch": 32, "batch_size": 32, "lr": 1.125e-3,
              "weight_decay": 0.02, "lr_warmup_epochs": 2.0},
    # LLaVA-EAS on AID: 20 search epochs of which the first 380 micro-batches of 8 x 4 GPUs (about
    # 6 epochs of the 2,000 AID-20 images) are random-subnet warm-up; M = 5 every 3 micro-batches
    # (under one optimizer step of 8 x 4 GPUs x accum 4 = 128), bandit lr 1; lr 4e-4, wd 0;
    # fine-tune 20 epochs. The doc gives no fine-tune LR warm-up: LaVIN's 2 epochs are kept. The
    # bandit is LLaVA-EAS's (--search llava: sigmoid policy, curriculum on K) unless --search says otherwise.
    "llava": {"warmup_epochs": 6.0, "search_epochs": 14.0, "nas_every": 1,
              "candidates": 5, "search_lr": 1.0, "val_batch": 32, "batch_size": 128, "lr": 4e-4,
              "weight_decay": 0.0, "lr_warmup_epochs": 2.0},
}
FIELDS = tuple(DEMO)


def recipe_values(name: str, arch: str) -> dict:
    """The values recipe `name` gives for architecture `arch` (every FIELD, and for paper the bandit's)."""
    return dict(DEMO) if name == "demo" else dict(PAPER[arch])


def describe(name: str, arch: str, resolved: dict) -> str:
    """One line for the report: which recipe ran, what the flags changed, how the demo differs."""
    own = recipe_values(name, arch)
    changed = {k: resolved[k] for k in own if resolved[k] != own[k]}
    text = (f"recipe {name}" + (f" ({arch.upper()}-EAS, eas_method.md)" if name == "paper" else
                                " (CPU demo defaults, NOT the paper's schedule)"))
    if changed:
        text += "; overridden by flags: " + ", ".join(f"{k}={v}" for k, v in changed.items())
    if name == "demo":
        paper = PAPER[arch]
        text += ("; the paper's (--recipe paper): " +
                 ", ".join(f"{k}={paper[k]}" for k in paper if paper[k] != resolved[k]))
    return text
