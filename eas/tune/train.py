"""Adapter-tuning utilities (eas_method.md §4.1): AdamW groups, LR schedule, precision, checkpoints.

The recipe: AdamW(betas 0.9/0.95, weight decay 0.02 except biases and 1-D parameters), a
per-iteration linear warm-up from 0 followed by a half-cycle cosine, gradient accumulation.
"""
from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from eas.errors import CheckpointError, EASError
from eas.io.files import atomic_write
from eas.distributed import active


def param_groups(model: nn.Module, weight_decay: float, lr_scales: dict[str, float] | None = None) -> list[dict]:
    """Trainable parameters split as timm's param_groups_weight_decay: biases and 1-D tensors
    (norm gains, scales) get no decay; frozen parameters are left out entirely.

    lr_scales {name prefix: factor}: those parameters get groups of their own whose learning rate
    is the schedule's times factor (key "lr_scale", read by set_lr), e.g. the projector's
    --projector-lr / --lr. Every group is returned, empty ones included, in a fixed order.
    """
    scales = [1.0, *(lr_scales or {}).values()]
    groups = [{"params": [], "weight_decay": wd, "lr_scale": scale} for scale in scales for wd in (0.0, weight_decay)]
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = next((i + 1 for i, prefix in enumerate(lr_scales or {}) if name.startswith(prefix)), 0)
        groups[2 * part + (0 if p.ndim <= 1 or name.endswith(".bias") else 1)]["params"].append(p)
    return groups


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.02,
                   betas: tuple[float, float] = (0.9, 0.95), lr_scales: dict[str, float] | None = None
                   ) -> torch.optim.AdamW:
    groups = [g for g in param_groups(model, weight_decay, lr_scales) if g["params"]]
    if not groups:
        raise ValueError("the model has no trainable parameters: call eas.adapters.attach.mark_trainable first")
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def lr_at(step: float, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float = 0.0) -> float:
    """Linear warm-up from 0 over warmup_steps, then half-cycle cosine reaching min_lr at total_steps.

    step may be fractional (MAE/LaVIN evaluate it at epoch + iteration / iterations_per_epoch).
    """
    if not 0 <= warmup_steps <= total_steps or total_steps <= 0:
        raise ValueError(f"need 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps}), total > 0")
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's rate, times each group's lr_scale (param_groups)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def autocast_context(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Matrix products in the frozen base's dtype next to fp32 adapters; plain fp32 needs no autocast."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def train_step(model: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer, batches: Sequence,
               step: int, schedule: Callable[[int], float] | None = None) -> float:
    """One optimizer step over micro-batches (and over ranks, when distributed); returns the step's loss.

    loss_fn(model, batch) -> (summed loss, count), e.g. the summed token cross-entropy and the
    number of supervised tokens, in whatever precision loss_fn chooses (autocast_context). The step
    minimises sum(losses) / sum(counts) over every micro-batch of every rank, so the gradient is exactly that of the concatenated global batch,
    whatever the micro-batch sizes or the number of processes. schedule(step) sets the learning
    rate of every group first. When distributed, a rank may bring no micro-batch (its whole shard
    was unreadable): it still joins the collectives and the others' gradient is applied.
    """
    distributed = active()
    if not batches and not distributed:
        raise ValueError("train_step needs at least one micro-batch")
    if schedule is not None:
        set_lr(optimizer, schedule(step))
    params = [p for g in optimizer.param_groups for p in g["params"]]
    device = params[0].device
    optimizer.zero_grad(set_to_none=True)
    totals = torch.zeros(2, device=device, dtype=torch.float64)  # summed loss, count
    for batch in batches:
        loss_sum, count = loss_fn(model, batch)
        loss_sum.backward()
        totals += torch.stack([loss_sum.detach().double(), torch.as_tensor(count, dtype=torch.float64,
                                                                            device=device)])
    if distributed:
        _all_reduce_grads(params, totals)
    loss_total, count_total = totals.tolist()
    if count_total <= 0:
        raise ValueError(f"step {step}: the batch has nothing to learn from (count {count_total})")
    mean_loss = loss_total / count_total
    if not math.isfinite(mean_loss):
        raise FloatingPointError(f"non-finite training loss {mean_loss} at step {step}; parameters not updated")
    for p in params:
        if p.grad is not None:
            p.grad /= count_total
    optimizer.step()
    return mean_loss


def _all_reduce_grads(params: list[nn.Parameter], totals: torch.Tensor) -> None:
    """Sum gradients and (loss, count) over ranks, as DDP would, in two collectives.

    A parameter no rank used (an adapter of a layer the sub-network skips) keeps grad None, so
    AdamW leaves it alone exactly as in a single process; one used on some ranks only (a visual
    adapter when a rank's shard holds no image) gets the others' gradient.
    """
    used = torch.tensor([p.grad is not None for p in params], dtype=torch.float64, device=totals.device)
    both = torch.cat([totals, used])
    dist.all_reduce(both)
    totals.copy_(both[:2])
    reached = [p for p, u in zip(params, both[2:].tolist()) if u > 0]
    if not reached:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in reached])
    dist.all_reduce(flat)
    for p, g in zip(reached, flat.split([p.numel() for p in reached])):
        p.grad = g.view_as(p).to(p.dtype)


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only what training changes (the adapters), so checkpoints stay small next to a frozen 7B base."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    if expected != state.keys():
        missing, extra = sorted(expected - state.keys()), sorted(state.keys() - expected)
        raise CheckpointError(f"{source}: trainable parameters differ; missing {missing[:8]}, unexpected {extra[:8]}")
    params = dict(model.named_parameters())
    for name, value in state.items():
        if params[name].shape != value.shape:
            raise CheckpointError(f"{source}: {name} has shape {tuple(value.shape)}, the model expects "
                                  f"{tuple(params[name].shape)}")
        with torch.no_grad():
            params[name].copy_(value)


def save_checkpoint(path, payload: dict, error: type[EASError] = CheckpointError) -> Path:
    """Write {name: plain data or tensors} atomically: a crash or a full disk never leaves a
    half-written file; a file-system failure raises `error` naming the path.

    The payload (adapters and their optimizer state, small next to the base) is serialised in
    memory first: torch's zip writer reports a full disk as an unrelated RuntimeError, a plain
    file write as the OSError it is."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write(path, lambda f: f.write(buffer.getbuffer()), error)


def load_checkpoint(path, required: tuple[str, ...] = ()) -> dict:
    """The saved {name: state}, with at least the `required` names; tensors on the CPU. Only plain
    data is unpickled (weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load reports corruption as several unrelated types
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt: {_first_line(e)}") from e
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(saved).__name__}, not a dict of named states")
    missing = [k for k in required if k not in saved]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}: not written by this version of "
                              f"`run.py tune`")
    return saved


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
