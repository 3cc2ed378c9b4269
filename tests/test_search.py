"""The k-armed-bandit search (eas_method.md §3.1) against hand-computed and analytic references."""
import io
import math

import pytest
import torch
import torch.distributed as dist

from eas.model.config import LlamaConfig
from eas.adapters.attach import EASConfig, add_adapters, set_skipped
from eas.model.llama import Llama
from eas.search import BanditSearch, bandit_round, broadcast_subnets, score_subnets, skip_target

# Synthetic task: skipping unit i costs PENALTY[i]; units 2, 5, 6 are (almost) free to skip.
PENALTY = torch.tensor([0.030, 0.025, 0.0, 0.035, 0.020, 0.001, 0.0, 0.040])
REDUNDANT = (2, 5, 6)


def synthetic_loss(subnet):
    return 0.5 + PENALTY[list(subnet)].sum().item()


def run(search, steps, log=None):
    for _ in range(steps):
        subnets = search.sample_distinct(3)
        if log is not None:
            log.append(subnets)
        search.update(subnets, [synthetic_loss(s) for s in subnets])


def test_search_finds_the_redundant_units():
    search = BanditSearch(8, 3, generator=torch.Generator().manual_seed(0))
    run(search, 300)
    assert search.top_k() == REDUNDANT
    assert set(search.importance_order()[-3:]) == set(REDUNDANT)  # least important last
    s = search.scores
    assert s[list(REDUNDANT)].min() > s[[0, 1, 3, 4, 7]].max()
    assert search.step == 300 and search.trajectories().shape == (301, 8)
    assert torch.equal(search.trajectories()[0], torch.zeros(8)) and torch.equal(search.trajectories()[-1], s)


def test_update_matches_hand_computation():
    search = BanditSearch(3, 2, beta=10.0, lr=2.0)
    search.scores = torch.tensor([0.0, 0.1, -0.05])
    # p = softmax(10 s) = (1, e, e^-0.5) / 4.32481 = (0.231224, 0.628532, 0.140244)
    # r = exp(-(0.5, 1.0, 0.2)) = (0.606531, 0.367879, 0.818731), r̄ = 0.597714
    # unit 0 is in sets 1 and 3: 2 p0 (1 - p0) [(0.606531 - r̄) + (0.818731 - r̄)] = 0.0817104
    delta = search.update([(0, 1), (1, 2), (0, 2)], [0.5, 1.0, 0.2])
    expected = torch.tensor([0.08171037, -0.10320598, -0.00212625])
    assert torch.allclose(delta, expected, atol=1e-6)
    assert torch.allclose(search.scores, torch.tensor([0.0, 0.1, -0.05]) + expected, atol=1e-6)


def test_update_rejects_bad_input():
    search = BanditSearch(4, 2)
    with pytest.raises(ValueError, match="one loss per sub-network"):
        search.update([(0, 1)], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        search.update([(0, 1), (2, 3)], [0.1, float("nan")])
    with pytest.raises(ValueError, match="distinct units"):
        search.update([(0, 4)], [0.1])
    assert search.step == 0 and torch.equal(search.scores, torch.zeros(4))


def test_sampling_follows_the_policy():
    search = BanditSearch(5, 1, generator=torch.Generator().manual_seed(1))
    search.scores = torch.tensor([0.0, 0.05, 0.1, -0.1, 0.2])
    e = [math.exp(10 * x) for x in search.scores.tolist()]
    p = [x / sum(e) for x in e]
    assert torch.allclose(search.probs(), torch.tensor(p))
    n = 10_000
    counts = torch.zeros(5)
    for _ in range(n):
        counts[list(search.sample())] += 1
    assert torch.allclose(counts / n, torch.tensor(p), atol=0.015)
    # K = 2 without replacement (Plackett-Luce): P(i in S) = p_i + sum_{j != i} p_j p_i / (1 - p_j)
    inclusion = [p[i] + sum(p[j] * p[i] / (1 - p[j]) for j in range(5) if j != i) for i in range(5)]
    counts.zero_()
    for _ in range(n):
        subnet = search.sample(2)
        assert len(set(subnet)) == 2 and list(subnet) == sorted(subnet)
        counts[list(subnet)] += 1
    assert torch.allclose(counts / n, torch.tensor(inclusion), atol=0.015)


def test_sampling_is_deterministic_given_the_seed():
    def draws(seed):
        search = BanditSearch(10, 4, generator=torch.Generator().manual_seed(seed))
        return [search.sample_distinct(3) for _ in range(5)]
    assert draws(3) == draws(3)
    assert draws(3) != draws(4)


def test_resume_from_state_dict_is_exact():
    straight, log_a = BanditSearch(8, 3, generator=torch.Generator().manual_seed(7)), []
    run(straight, 100, log_a)

    first, log_b = BanditSearch(8, 3, generator=torch.Generator().manual_seed(7)), []
    run(first, 50, log_b)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = BanditSearch(8, 3, generator=torch.Generator().manual_seed(999))  # seed overwritten by the state
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    run(resumed, 50, log_b)

    assert log_a == log_b
    assert torch.equal(straight.scores, resumed.scores)
    assert torch.equal(straight.trajectories(), resumed.trajectories())
    assert resumed.step == 100
    with pytest.raises(ValueError, match="k"):
        BanditSearch(8, 4).load_state_dict(first.state_dict())


def test_distinct_sampling_and_its_limits():
    search = BanditSearch(5, 2)
    every = search.sample_distinct(10)  # all C(5, 2) sets
    assert len(set(every)) == 10 and all(len(s) == 2 and s[0] < s[1] for s in every)
    with pytest.raises(ValueError, match=r"C\(5, 2\) = 10"):
        search.sample_distinct(11)
    peaked = BanditSearch(4, 2)
    peaked.scores = torch.tensor([100.0, 100.0, 0.0, 0.0])  # {0, 1} has probability ~1
    with pytest.raises(RuntimeError, match="too peaked"):
        peaked.sample_distinct(2, max_draws=1000)


def test_sync_without_distributed_is_a_no_op():
    assert not dist.is_initialized()
    search = BanditSearch(4, 2)
    search.update([(0, 1), (2, 3)], [0.1, 0.3])
    before = search.scores.clone()
    search.sync()
    assert torch.equal(search.scores, before)
    assert broadcast_subnets([(0, 1), [2, 3]]) == [(0, 1), (2, 3)]


def _two_rank_sync(rank: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/pg", rank=rank, world_size=2)
    try:
        search = BanditSearch(4, 2)
        search.scores = torch.tensor([1.0, 2.0, 3.0, 4.0]) * (rank + 1)  # rank 1 holds twice rank 0's s
        search.sync()
        subnets = broadcast_subnets([(0, 1), (2, 3)] if rank == 0 else [(1, 2), (0, 3)])
        torch.save({"scores": search.scores, "last": search.trajectories()[-1], "subnets": subnets},
                   f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sync_averages_and_broadcast_takes_rank_zero_over_two_processes(tmp_path):
    torch.multiprocessing.spawn(_two_rank_sync, args=(str(tmp_path),), nprocs=2)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.equal(got["scores"], torch.tensor([1.5, 3.0, 4.5, 6.0])) and torch.equal(got["last"], got["scores"])
        assert got["subnets"] == [(0, 1), (2, 3)]


def tiny_eas(gen):
    model = Llama(LlamaConfig.named("test", n_layers=3)).init_weights(gen)
    add_adapters(model, EASConfig(adapter_dim=4, skip_dim=8))
    for name, p in model.named_parameters():
        if "up_" in name:  # non-identity adapters, so each skip set gives a different loss
            p.data = torch.randn(p.shape, generator=gen) * 0.2
    return model.eval()


def test_score_subnets_restores_the_skip_set(gen):
    model = tiny_eas(gen)
    tokens = torch.randint(1, model.cfg.vocab_size, (2, 9), generator=gen)

    def loss():
        assert not torch.is_grad_enabled()
        logits = model(tokens[:, :-1])
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())

    subnets = [(0,), (1,), (2,)]
    with torch.no_grad():
        reference = {}
        for s in subnets:
            set_skipped(model, s)
            reference[s] = loss().item()
    assert len(set(reference.values())) == 3

    set_skipped(model, (0, 2))
    target = skip_target(model)
    assert target.n_units == 3 and target.current() == (0, 2)
    assert score_subnets(loss, subnets, target) == [reference[s] for s in subnets]
    assert model.eas.skip_layers == (0, 2) and [b.skipped for b in model.layers] == [True, False, True]

    search = BanditSearch(3, 1, generator=torch.Generator().manual_seed(0))
    set_skipped(model, ())
    sampled, scored = bandit_round(search, target, loss, m=3)  # m = 3 of C(3, 1): every singleton
    assert sorted(sampled) == subnets and scored == [reference[s] for s in sampled]
    assert search.step == 1 and model.eas.skip_layers == ()


def test_score_subnets_restores_after_an_error(gen):
    model = tiny_eas(gen)
    set_skipped(model, (1,))

    def failing():
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        score_subnets(failing, [(0, 2)], skip_target(model))
    assert model.eas.skip_layers == (1,)


@pytest.mark.parametrize("unit,runs", [("attention", ["adapter_skip"]), ("ffn", ["adapter_attn", "adapter_skip"]),
                                       ("layer", ["adapter_skip"])])
def test_each_unit_switches_its_own_blocks(unit, runs, gen):
    """The skip target switches layer 1 only; what runs there is what the unit leaves of the layer."""
    model = Llama(LlamaConfig.named("test", n_layers=3)).init_weights(gen)
    add_adapters(model, EASConfig(adapter_dim=4, skip_dim=8, unit=unit))
    target = skip_target(model, unit)
    target.apply((1,))
    blk = model.layers[1]
    assert [n for n in ("adapter_attn", "adapter_skip") if getattr(blk, n) in blk.active_adapters()] == runs
    assert all(b.active_adapters() == [b.adapter_attn] for b in model.layers if b.layer != 1)
    assert target.current() == (1,) and target.unit == unit


def test_skip_target_refuses_what_it_cannot_switch(gen):
    model = tiny_eas(gen)
    with pytest.raises(ValueError, match="attached for unit 'attention'"):
        skip_target(model, "ffn")
    with pytest.raises(ValueError, match="unknown skip unit"):
        EASConfig(unit="head")
    with pytest.raises(ValueError, match="add_adapters"):
        skip_target(Llama(LlamaConfig.named("test")))
