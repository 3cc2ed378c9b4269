"""Set-up of a tuning run: base model, adapters, data and search, each input checked on arrival."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from eas.adapters.attach import EASConfig, add_adapters, freeze_routers, mark_trainable, set_dropout_generator
from eas.data import DataWarning
from eas.data.tasks import TaskData, load_task
from eas.errors import CheckpointError, DataError, TokenizerError, UsageError
from eas.io.assemble import assemble_lavin, assemble_llava, llava_form
from eas.io.checkpoint import load_model, stored_dtype
from eas.io.load_llava import llava_layout, load_llava
from eas.model.lavin import Lavin
from eas.model.llava import Llava
from eas.model.tokenizer import Tokenizer
from eas.search import BanditSearch, skip_target
from eas.tune.batches import Batches
from eas.tune.config import TuneConfig, check_against_model, resolve_device, resolve_dtype, with_defaults
from eas.distributed import init_distributed, rank_zero_first
from eas.tune.run_folder import RunFolder
from eas.tune.session import Session, stage_steps
from eas.tune.train import trainable_state_dict


def open_session(cfg: TuneConfig) -> Session:
    """Everything a run needs, from validated settings (eas.tune.config.validate)."""
    device = resolve_device(cfg)
    dtype = resolve_dtype(cfg, device)
    rank, world = init_distributed(device, int(os.environ.get("WORLD_SIZE", "1")))
    folder = RunFolder(cfg.run_dir, rank == 0)
    folder.prepare(cfg.resume)
    model, tok, tok_path = load_base(cfg, device, dtype)
    cfg = with_defaults(cfg, "llava" if isinstance(model, Llava) else "lavin", model.llama.cfg.dim)
    k = check_against_model(cfg, model.llama.cfg.n_layers)
    with rank_zero_first(rank == 0):
        task = load_task(cfg.task, cfg.data_root, cache_dir=cfg.cache_dir, setting=cfg.setting, seed=cfg.seed,
                         image_size=model.cfg.vision.image_size, synthetic_per_class=cfg.synthetic_per_class,
                         arch=cfg.arch)
    batches = Batches(task, model, tok, device=device, dtype=dtype, seed=cfg.seed, batch_size=cfg.batch_size,
                      accum=cfg.accum, val_batch=cfg.val_batch, rank=rank, world=world)
    check_splits(cfg, task, world, stage_steps(cfg, k, batches.epoch_steps("search"), "search") > 0)
    dropout = attach_adapters(model, cfg, device)
    search = BanditSearch(model.llama.cfg.n_layers, max(k, 1), beta=cfg.beta, lr=cfg.search_lr,
                          generator=torch.Generator().manual_seed(cfg.seed), policy=POLICY[cfg.search])
    session = Session(cfg, device, dtype, rank, world, model, tok, tok_path, task, k, batches, search,
                      skip_target(model, cfg.unit), dropout, trainable_state_dict(model), folder,
                      stored_dtype(cfg.llama or cfg.base))
    session.seed_dropout()
    return session


POLICY = {"lavin": "softmax", "llava": "sigmoid"}  # each --search variant's policy (eas.search)


def load_base(cfg: TuneConfig, device: torch.device, dtype: torch.dtype):
    """-> (Lavin or Llava, Tokenizer, tokenizer path), the base frozen in `dtype` on `device`.
    --arch llava on a LaVIN base (the tiny one) tunes its LLaVA form: same LLaMA and ViT, a new
    projector that tune trains, as LLaVA-EAS trains mm_projector."""
    model, tok_path, source = _read_base(cfg, device, dtype)
    if cfg.arch == "llava" and isinstance(model, Lavin):
        model = llava_form(model.llama, model.visual, device)
    elif cfg.arch == "lavin" and isinstance(model, Llava):
        raise UsageError(f"--arch lavin, but {source} is a LLaVA model (its projector reads patch tokens, "
                         f"not LaVIN's CLS taps); drop --arch or pass --arch llava")
    if tok_path is None or not Path(tok_path).is_file():
        raise TokenizerError(f"no tokenizer.model found next to the base model ({source})")
    model.requires_grad_(False)
    warnings.simplefilter("always", DataWarning)
    return model, Tokenizer(tok_path), Path(tok_path)


def _read_base(cfg: TuneConfig, device: torch.device, dtype: torch.dtype):
    """-> (model, tokenizer path or None, what it was read from)."""
    if cfg.llama:
        assemble = assemble_llava if cfg.arch == "llava" else assemble_lavin
        return (*assemble(cfg.llama, cfg.clip, dtype=dtype, device=device), cfg.llama)
    base = Path(cfg.base)
    if base.is_dir() and llava_layout(base) is not None:
        model, tok_path = load_llava(base, cfg.clip, dtype, device)
        return model, tok_path, base
    if cfg.clip:
        raise UsageError(f"--clip {cfg.clip}: only --llama or an original LLaVA release as --base take a tower; "
                         f"{base} holds its own")
    try:
        model = load_model(base, dtype=dtype, device=device)
    except CheckpointError as e:
        raise CheckpointError(f"cannot load base model {base}: {e}") from e
    if not isinstance(model, (Lavin, Llava)):
        raise CheckpointError(f"{base} holds a text-only LLaMA; tuning needs a LaVIN or LLaVA model "
                              f"(or pass --llama DIR --clip FILE)")
    return model, base / "tokenizer.model", base


def check_splits(cfg: TuneConfig, task: TaskData, world: int, searching: bool) -> None:
    """Refuse data the run could not use, before any training step."""
    if len(task.train) < cfg.batch_size or cfg.batch_size < world * cfg.accum:
        raise UsageError(f"--batch-size {cfg.batch_size} must be at least ranks x accum ({world} x {cfg.accum}) "
                         f"and at most the {len(task.train)} training examples of {task.source}")
    if searching and cfg.search == "lavin" and not task.val:
        raise DataError(f"the validation split of {task.source} has no examples, and the search scores "
                        f"sub-networks on it (pass --search llava to score them on training batches, or --skip 0 or "
                        f"--skip-set to tune without a search)")
    if not task.test:
        raise DataError(f"the test split of {task.source} has no examples: nothing to evaluate")


def attach_adapters(model, cfg: TuneConfig, device: torch.device) -> torch.Generator:
    """PIA adapters drawn from --seed (identical on every rank), trainable in fp32 next to the base;
    returns the generator their dropout draws from."""
    add_adapters(model, EASConfig(adapter_dim=cfg.adapter_dim, skip_dim=cfg.skip_dim, dropout=cfg.dropout,
                                  unit=cfg.unit), generator=torch.Generator().manual_seed(cfg.seed))
    mark_trainable(model)
    if cfg.merge == "static":
        freeze_routers(model)  # the static merge is then exact for the tuned model
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    model.llama.grad_checkpointing = cfg.grad_checkpointing
    dropout = torch.Generator(device=device)
    set_dropout_generator(model, dropout)
    return dropout
