"""The few collectives the search and the tune pipeline need under torchrun; each is the identity in one process.

Every function here is collective: all ranks must call it at the same point.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.distributed as dist


def init_distributed(device: torch.device, world: int) -> tuple[int, int]:
    """(rank, world size); joins the process group torchrun describes (world > 1) on first call."""
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def collective_device(process_group=None) -> torch.device:
    """Where tensors must live to take part in a collective: NCCL reduces on the GPU, gloo on the CPU."""
    if dist.get_backend(process_group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_rank(flag: bool) -> bool:
    """Whether `flag` holds on some rank."""
    if not active():
        return flag
    t = torch.tensor([float(flag)], device=collective_device())
    dist.all_reduce(t)
    return bool(t.item())


def from_rank_zero(*flags: bool) -> tuple[bool, ...]:
    """Rank 0's values of `flags` on every rank, so that all ranks take the same branch."""
    if not active():
        return flags
    t = torch.tensor([float(f) for f in flags], device=collective_device())
    dist.broadcast(t, 0)
    return tuple(bool(x) for x in t.tolist())


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    if active():
        dist.all_reduce(t)
    return t


def gather(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not active():
        return [obj]
    objs = [None] * dist.get_world_size()
    dist.all_gather_object(objs, obj)
    return objs


def barrier() -> None:
    if active():
        dist.barrier()


@contextmanager
def rank_zero_first(lead: bool):
    """Rank 0 runs the block first (e.g. writes the synthetic data set), the others after it."""
    if not lead:
        barrier()
    yield
    if lead:
        barrier()
