"""Attention-redundancy search: the k-armed bandit of eas_method.md §3.1 (LaVIN-EAS convention)
and its LLaVA-EAS variant (§3.2).

One fp32 preference per candidate unit, s (init 0); a HIGH s_i means unit i is more SKIPPABLE
(the paper's importance H is about -s). Policy p = softmax(beta * s) (LaVIN-EAS), or independent
p_i = sigmoid(beta * s_i) (LLaVA-EAS, beta = 1). A sub-network is a set of K distinct units to
skip, drawn without replacement proportionally to p (torch.multinomial(p, K) in both codes).
After scoring M distinct sub-networks, with reward r_m = exp(-L_m) and baseline r̄ = mean(r):

    s_i += lr * (r_m - r̄) * p_i * (1 - p_i)    for every m and every i in S_m, p from before.

LLaVA-EAS also grows K during its warm-up (curriculum_k).

The sampler owns a CPU torch.Generator, so a search can be checkpointed and resumed bit-exactly.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from eas.adapters.attach import UNITS, eas_blocks, llama_of, set_skipped
from eas.distributed import collective_device

Subnet = tuple[int, ...]
POLICIES = ("softmax", "sigmoid")


def curriculum_k(k: int, t: int, warmup: int) -> int:
    """LLaVA-EAS's K at micro-step t: min(K, floor(2 K t / warmup) + 1), 1 at t = 0 and K from
    t = warmup / 2 on; K throughout without a warm-up."""
    if warmup <= 0:
        return k
    return min(k, (2 * k * t) // warmup + 1)


class BanditSearch:
    def __init__(self, n_units: int, k: int, beta: float = 10.0, lr: float = 2.0,
                 generator: torch.Generator | None = None, policy: str = "softmax"):
        if not 0 < k <= n_units:
            raise ValueError(f"cannot skip k={k} of {n_units} units")
        if policy not in POLICIES:
            raise ValueError(f"policy {policy!r}: expected one of {POLICIES}")
        if generator is None:
            generator = torch.Generator().manual_seed(0)  # the recipe seeds every rank with 0
        if generator.device.type != "cpu":
            raise ValueError("BanditSearch samples on the CPU; pass a CPU torch.Generator")
        self.n_units, self.k, self.beta, self.lr, self.policy = n_units, k, float(beta), float(lr), policy
        self.generator = generator
        self.scores = torch.zeros(n_units, dtype=torch.float32)
        self.step = 0
        self.history = [self.scores.clone()]  # s after every update, for trajectory plots

    def probs(self) -> torch.Tensor:
        """p: softmax over the units, or each unit's own sigmoid (not a distribution: sampling normalises)."""
        if self.policy == "sigmoid":
            return torch.sigmoid(self.beta * self.scores)
        return torch.softmax(self.beta * self.scores, dim=0)

    def _log_weights(self) -> torch.Tensor:
        """log p up to a constant, in float64: what draws without replacement are proportional to."""
        logits = self.beta * self.scores.double()
        return torch.nn.functional.logsigmoid(logits) if self.policy == "sigmoid" else logits

    def _draw(self, n: int, k: int) -> torch.Tensor:
        """n independent sub-networks [n, k], each K distinct units ∝ p without replacement.

        Gumbel-top-K: the K largest beta*s_i + Gumbel noise follow the same law as successive
        multinomial draws without replacement (torch.multinomial(p, K) in the authors' code).
        """
        if not 0 < k <= self.n_units:
            raise ValueError(f"cannot sample k={k} of {self.n_units} units")
        u = torch.rand(n, self.n_units, generator=self.generator, dtype=torch.float64)
        keys = self._log_weights() - torch.log(-torch.log(u))
        return torch.topk(keys, k, dim=1).indices.sort(dim=1).values

    def sample(self, k: int | None = None) -> Subnet:
        """One sub-network: K distinct units (sorted) to skip, drawn from the current policy."""
        return tuple(self._draw(1, self.k if k is None else k)[0].tolist())

    def sample_distinct(self, m: int, k: int | None = None, max_draws: int = 1_000_000) -> list[Subnet]:
        """m distinct sub-networks: i.i.d. draws, duplicates discarded (the authors re-sample).

        Draws come in growing batches because a peaked policy can need thousands of re-draws;
        max_draws turns a hopeless case (a new set astronomically unlikely) into an error, not a hang.
        """
        k = self.k if k is None else k
        possible = math.comb(self.n_units, k)
        if m > possible:
            raise ValueError(f"cannot draw {m} distinct sub-networks: only C({self.n_units}, {k}) = "
                             f"{possible} exist")
        found: list[Subnet] = []
        drawn, batch = 0, m
        while len(found) < m and drawn < max_draws:
            for row in self._draw(batch, k).tolist():
                if tuple(row) not in found:
                    found.append(tuple(row))
                    if len(found) == m:
                        break
            drawn, batch = drawn + batch, min(4 * batch, 65_536)
        if len(found) < m:
            raise RuntimeError(f"found only {len(found)} of {m} distinct sub-networks in {drawn} draws: "
                               f"the policy is too peaked (max p = {self.probs().max().item():.6f})")
        return found

    def update(self, subnets: Sequence[Sequence[int]], losses: Sequence[float]) -> torch.Tensor:
        """Apply the bandit update for scored sub-networks; returns the change in s."""
        if len(subnets) != len(losses) or not subnets:
            raise ValueError(f"need one loss per sub-network, got {len(subnets)} sub-networks and {len(losses)} losses")
        losses = torch.as_tensor([float(x) for x in losses], dtype=torch.float64)
        if torch.isnan(losses).any():
            raise ValueError(f"NaN loss in bandit update: {losses.tolist()}")
        for subnet in subnets:
            if len(set(subnet)) != len(subnet) or any(not 0 <= int(i) < self.n_units for i in subnet):
                raise ValueError(f"sub-network {tuple(subnet)} must be distinct units in 0..{self.n_units - 1}")
        rewards = torch.exp(-losses)
        advantage = rewards - rewards.mean()
        p = self.probs().double()
        gain = self.lr * p * (1 - p)
        delta = torch.zeros(self.n_units, dtype=torch.float64)
        for subnet, adv in zip(subnets, advantage):
            idx = torch.as_tensor([int(i) for i in subnet], dtype=torch.long)
            delta.index_add_(0, idx, adv * gain[idx])  # a unit in several sets gets several increments
        self.scores += delta.float()
        self.step += 1
        self.history.append(self.scores.clone())
        return delta.float()

    def top_k(self, k: int | None = None) -> Subnet:
        """The final skip set: the K most skippable units, i.e. the tail of importance_order()."""
        k = self.k if k is None else k
        return tuple(sorted(self.importance_order()[self.n_units - k:]))

    def importance_order(self) -> list[int]:
        """Units from most important (lowest s) to most skippable (highest s); among equal s the
        higher index counts as more skippable. The authors print the tail of this order."""
        return torch.sort(self.scores, stable=True).indices.tolist()

    def trajectories(self) -> torch.Tensor:
        """[updates + 1, n_units]: s after each update (row 0 is the initial zeros)."""
        return torch.stack(self.history)

    def sync(self, process_group=None) -> None:
        """Average s over ranks (each rank applied its own update); a no-op without distributed."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        s = self.scores.to(collective_device(process_group))
        dist.all_reduce(s, op=dist.ReduceOp.SUM, group=process_group)
        self.scores = (s / dist.get_world_size(process_group)).cpu()
        self.history[-1] = self.scores.clone()

    def state_dict(self) -> dict:
        return {"n_units": self.n_units, "k": self.k, "beta": self.beta, "lr": self.lr, "policy": self.policy,
                "step": self.step,
                "scores": self.scores.clone(), "history": self.trajectories(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        mine = {"n_units": self.n_units, "k": self.k, "beta": self.beta, "lr": self.lr, "policy": self.policy}
        theirs = {key: state.get(key, "softmax" if key == "policy" else None) for key in mine}
        if mine != theirs:
            raise ValueError(f"search state was saved with {theirs}, this search has {mine}")
        self.scores = state["scores"].float().clone()
        self.history = list(state["history"].float().clone().unbind(0))
        self.step = int(state["step"])
        self.generator.set_state(state["generator"])


def broadcast_subnets(subnets: Sequence[Sequence[int]], process_group=None) -> list[Subnet]:
    """Every rank takes rank 0's sub-networks (all ranks pass lists of the same shape);
    a no-op without distributed."""
    subnets = [tuple(int(i) for i in s) for s in subnets]
    if not (dist.is_available() and dist.is_initialized()):
        return subnets
    t = torch.tensor(subnets, dtype=torch.long, device=collective_device(process_group))
    src = 0 if process_group is None else dist.get_global_rank(process_group, 0)
    dist.broadcast(t, src=src, group=process_group)
    return [tuple(row) for row in t.cpu().tolist()]


@dataclass(frozen=True)
class SkipTarget:
    """How search units map onto a model: candidate count, current skip set, and a setter."""
    unit: str
    n_units: int
    current: Callable[[], Subnet]
    apply: Callable[[Sequence[int]], None]


def skip_target(model: nn.Module, unit: str | None = None) -> SkipTarget:
    """Candidates of a LLaMA or Lavin super-network: one per layer, of the unit its EASConfig
    names (attention, ffn or layer). ``unit``, when given, must agree with it."""
    eas_blocks(model)
    eas = llama_of(model).eas
    if unit is not None and unit != eas.unit:
        raise ValueError(f"search unit {unit!r}, but the adapters were attached for unit {eas.unit!r} "
                         f"(EASConfig.unit); choose one of {UNITS}")
    return SkipTarget(eas.unit, llama_of(model).cfg.n_layers, lambda: tuple(eas.skip_layers),
                      lambda subnet: set_skipped(model, subnet))


def score_subnets(model_fn: Callable[[], torch.Tensor], subnets: Sequence[Sequence[int]],
                  apply_fn: SkipTarget) -> list[float]:
    """Loss of each sub-network without gradients; the previous skip set is restored afterwards.

    The model's train/eval mode is left to the caller (LaVIN-EAS scores in train mode, dropout on).
    """
    previous = apply_fn.current()
    losses = []
    try:
        with torch.no_grad():
            for subnet in subnets:
                apply_fn.apply(subnet)
                losses.append(float(model_fn()))
    finally:
        apply_fn.apply(previous)
    return losses


def bandit_round(search: BanditSearch, target: SkipTarget, model_fn: Callable[[], torch.Tensor], m: int = 3,
                 process_group=None) -> tuple[list[Subnet], list[float]]:
    """One search update (every nas_turn micro-steps): sample M distinct sets of K, score, update, sync."""
    subnets = broadcast_subnets(search.sample_distinct(m), process_group)
    losses = score_subnets(model_fn, subnets, target)
    search.update(subnets, losses)
    search.sync(process_group)
    return subnets, losses
