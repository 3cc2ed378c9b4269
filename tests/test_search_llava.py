"""The LLaVA-EAS bandit (eas_method.md §3.2): independent sigmoid policy, curriculum on K, step 1,
against hand-computed and enumerated references."""
import io
import itertools
import math

import pytest
import torch

from eas.search import BanditSearch, curriculum_k

PENALTY = torch.tensor([0.030, 0.025, 0.0, 0.035, 0.020, 0.001, 0.0, 0.040])  # units 2, 5, 6 are free to skip


def llava_search(n=8, k=3, seed=0):
    return BanditSearch(n, k, beta=1.0, lr=1.0, generator=torch.Generator().manual_seed(seed), policy="sigmoid")


def run(search, steps, log=None):
    for _ in range(steps):
        subnets = search.sample_distinct(5)
        if log is not None:
            log.append(subnets)
        search.update(subnets, [0.5 + PENALTY[list(s)].sum().item() for s in subnets])


def test_curriculum_matches_the_formula_by_hand():
    # K = 3, warm-up 10: floor(6 t / 10) + 1 = 1, 1, 2, 2, 3, then capped at 3
    assert [curriculum_k(3, t, 10) for t in range(8)] == [1, 1, 2, 2, 3, 3, 3, 3]
    # K = 4, warm-up 8: floor(t) + 1, reaching K at t = 3 (before half the warm-up ends)
    assert [curriculum_k(4, t, 8) for t in range(6)] == [1, 2, 3, 4, 4, 4]
    assert curriculum_k(12, 380, 380) == 12 and curriculum_k(12, 189, 380) == 12 and curriculum_k(12, 0, 380) == 1
    assert curriculum_k(5, 0, 0) == 5  # no warm-up: K from the start


def test_sigmoid_update_matches_hand_computation():
    search = llava_search(3, 2)
    search.scores = torch.tensor([0.0, 1.0, -0.5])
    p = [1 / (1 + math.exp(-x)) for x in (0.0, 1.0, -0.5)]  # independent: they do not sum to 1
    assert torch.allclose(search.probs(), torch.tensor(p))
    subnets, losses = [(0, 1), (1, 2), (0, 2)], [0.5, 1.0, 0.2]
    r = [math.exp(-x) for x in losses]
    adv = [x - sum(r) / 3 for x in r]
    expected = [0.0, 0.0, 0.0]
    for subnet, a in zip(subnets, adv):  # the naive loop of pia_trainer.py
        for i in subnet:
            expected[i] += 1.0 * a * p[i] * (1 - p[i])
    delta = search.update(subnets, losses)
    assert torch.allclose(delta, torch.tensor(expected), atol=1e-6)
    assert torch.allclose(search.scores, torch.tensor([0.0, 1.0, -0.5]) + torch.tensor(expected), atol=1e-6)


def test_sampling_follows_the_normalised_sigmoid_without_replacement():
    """torch.multinomial(sigmoid(s), K): successive draws ∝ sigmoid(s) among the units left;
    the reference enumerates every ordered draw."""
    search = llava_search(4, 2, seed=1)
    search.scores = torch.tensor([2.0, 0.0, -1.0, 1.0])
    w = torch.sigmoid(search.scores).tolist()
    exact = {}
    for a, b in itertools.permutations(range(4), 2):
        pr = w[a] / sum(w) * w[b] / (sum(w) - w[a])
        exact[tuple(sorted((a, b)))] = exact.get(tuple(sorted((a, b))), 0.0) + pr
    n = 20_000
    counts = {}
    for _ in range(n):
        s = search.sample()
        counts[s] = counts.get(s, 0) + 1
    assert set(counts) <= set(exact)
    assert all(abs(counts.get(s, 0) / n - pr) < 0.012 for s, pr in exact.items()), (counts, exact)
    # a softmax policy with the same scores samples differently (p ∝ e^s, not sigmoid(s))
    softmax = BanditSearch(4, 2, beta=1.0, generator=torch.Generator().manual_seed(1))
    softmax.scores = search.scores.clone()
    assert not torch.allclose(softmax.probs(), search.probs())


def test_llava_search_finds_the_redundant_units():
    search = llava_search()
    run(search, 400)
    assert search.top_k() == (2, 5, 6)


def test_resume_from_state_dict_is_exact_and_policy_is_checked():
    straight, log_a = llava_search(seed=7), []
    run(straight, 60, log_a)
    first, log_b = llava_search(seed=7), []
    run(first, 30, log_b)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = llava_search(seed=999)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    run(resumed, 30, log_b)
    assert log_a == log_b and torch.equal(straight.trajectories(), resumed.trajectories())
    with pytest.raises(ValueError, match="policy"):
        BanditSearch(8, 3, beta=1.0, lr=1.0).load_state_dict(first.state_dict())
    with pytest.raises(ValueError, match="policy 'gumbel'"):
        BanditSearch(8, 3, policy="gumbel")
