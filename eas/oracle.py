"""Which attentions does a tuned super-network actually not need? The oracle the search is judged by.

Given a loss of the current sub-network (e.g. the validation loss), the oracle measures it with
each unit skipped alone, and builds a K-set greedily, one unit at a time (at every step the unit
whose extra skip costs least). The bandit (eas/search.py) is compared with it by Spearman's rank
correlation between its preferences (high = skippable) and the negated oracle loss, so ρ = +1
means the two orders agree, and by the overlap of the two K-sets.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch

from eas.search import SkipTarget, score_subnets

Loss = Callable[[], torch.Tensor | float]


def skip_one_losses(loss_fn: Loss, target: SkipTarget) -> list[float]:
    """[loss with unit i skipped alone for i in 0..n-1]; the caller's skip set is restored."""
    return score_subnets(loss_fn, [(i,) for i in range(target.n_units)], target)


def greedy_set(loss_fn: Loss, target: SkipTarget, k: int,
               first: Sequence[float] | None = None) -> tuple[tuple[int, ...], list[float]]:
    """(the greedy oracle's K-set, sorted; the loss after each added unit). first: the skip-one
    losses if already measured (they are the greedy's first step); ties go to the lower index."""
    if not 0 < k <= target.n_units:
        raise ValueError(f"cannot build an oracle set of {k} of {target.n_units} units")
    chosen: list[int] = []
    path: list[float] = []
    for step in range(k):
        left = [i for i in range(target.n_units) if i not in chosen]
        if step == 0 and first is not None:
            losses = [float(first[i]) for i in left]
        else:
            losses = score_subnets(loss_fn, [tuple(sorted(chosen + [i])) for i in left], target)
        best = min(range(len(left)), key=lambda j: (losses[j], left[j]))
        chosen.append(left[best])
        path.append(losses[best])
    return tuple(sorted(chosen)), path


def all_sets(loss_fn: Loss, target: SkipTarget, k: int, limit: int = 64) -> dict[tuple[int, ...], float] | None:
    """{every K-set: its loss} when there are at most `limit` of them, else None (too many to score)."""
    if math.comb(target.n_units, k) > limit:
        return None
    sets = list(itertools.combinations(range(target.n_units), k))
    return dict(zip(sets, score_subnets(loss_fn, sets, target)))


def average_ranks(values: Sequence[float]) -> list[float]:
    """Ranks 1..n of values, ties sharing the mean of their ranks (as Spearman's ρ needs)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for t in range(i, j + 1):
            ranks[order[t]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson's r of the average ranks; NaN when either is constant."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"need two equally long sequences of at least 2 values, got {len(a)} and {len(b)}")
    ra, rb = average_ranks(a), average_ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / var if var > 0 else float("nan")


def agreement(preferences: Sequence[float], oracle_losses: Sequence[float], searched: Sequence[int],
              oracle_set: Sequence[int]) -> dict:
    """How the bandit agrees with the oracle: ρ (preference vs −loss, +1 = same order) and K-set overlap."""
    return {"spearman": spearman(list(preferences), [-x for x in oracle_losses]),
            "overlap": len(set(searched) & set(oracle_set)), "k": len(oracle_set)}
