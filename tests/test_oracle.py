"""The oracle (eas/oracle.py): a planted redundant attention, ranks and ρ against independent references."""
import itertools
import math

import pytest
import torch

from eas.adapters.attach import EASConfig, add_adapters, set_skipped
from eas.model.config import LlamaConfig
from eas.model.llama import Llama
from eas.oracle import agreement, all_sets, average_ranks, greedy_set, skip_one_losses, spearman
from eas.search import skip_target

DEAD = 2  # the layer whose attention output projection is zero: skipping it changes nothing


def planted(gen):
    """A 4-layer LLaMA with identity-initialised EAS adapters and layer DEAD's wo zeroed.

    Skipping an attention replaces x + Attn(n_att(x)) -> FFN(n_ffn(.)) by FFN(γ_ffn ⊙ n_att(x)/γ_att...):
    with the norm gains at 1 and Attn ≡ 0, the skipped and kept layer compute the same function."""
    model = Llama(LlamaConfig.named("test", n_layers=4)).init_weights(gen)
    with torch.no_grad():
        model.layers[DEAD].attention.wo.weight.zero_()
    add_adapters(model, EASConfig(adapter_dim=4, skip_dim=8), generator=gen)
    return model.eval()


def kl_to_full(model, tokens):
    """KL(full model || current sub-network) of the next-token distributions: 0 iff they agree."""
    set_skipped(model, ())
    with torch.no_grad():
        full = torch.log_softmax(model(tokens).double(), -1)

    def loss():
        sub = torch.log_softmax(model(tokens).double(), -1)
        return (full.exp() * (full - sub)).sum(-1).mean()
    return loss


def test_zero_output_projection_is_ranked_most_skippable(gen):
    model = planted(gen)
    tokens = torch.randint(1, model.cfg.vocab_size, (3, 12), generator=gen)
    target = skip_target(model)
    loss = kl_to_full(model, tokens)
    set_skipped(model, (1,))
    one = skip_one_losses(loss, target)
    assert model.eas.skip_layers == (1,)  # the caller's skip set is restored
    assert one[DEAD] < 1e-9 and min(x for i, x in enumerate(one) if i != DEAD) > 1e-4
    oracle, path = greedy_set(loss, target, 2, first=one)
    assert DEAD in oracle and path[0] == one[DEAD]
    every = all_sets(loss, target, 2)
    # the greedy's second step is the best pair that contains its first pick
    assert path[1] == pytest.approx(min(v for k, v in every.items() if DEAD in k), rel=1e-12)
    assert greedy_set(loss, target, 2) == (oracle, path)  # measuring step 1 itself gives the same
    # a bandit that prefers DEAD most, then the rest by the oracle's order, agrees perfectly
    prefs = [-x for x in one]
    got = agreement(prefs, one, oracle, oracle)
    assert got == {"spearman": pytest.approx(1.0), "overlap": 2, "k": 2}


def test_all_sets_refuses_too_many():
    target = type("T", (), {"n_units": 32})()
    assert all_sets(lambda: 0.0, target, 12) is None
    with pytest.raises(ValueError, match="cannot build"):
        greedy_set(lambda: 0.0, target, 0)


def naive_spearman(a, b):
    """1 - 6 Σd² / (n(n² - 1)): exact for distinct values."""
    n = len(a)
    ra = {i: r for r, i in enumerate(sorted(range(n), key=lambda i: a[i]))}
    rb = {i: r for r, i in enumerate(sorted(range(n), key=lambda i: b[i]))}
    return 1 - 6 * sum((ra[i] - rb[i]) ** 2 for i in range(n)) / (n * (n * n - 1))


def test_spearman_against_the_textbook_formula(gen):
    for n in (2, 5, 8, 32):
        a, b = torch.randn(n, generator=gen).tolist(), torch.randn(n, generator=gen).tolist()
        assert spearman(a, b) == pytest.approx(naive_spearman(a, b), abs=1e-12)
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="equally long"):
        spearman([1, 2], [1])


def test_ties_share_their_mean_rank_as_scipy_does(gen):
    assert average_ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]
    stats = pytest.importorskip("scipy.stats", reason="scipy is optional; the textbook test covers distinct values")
    for a, b in itertools.product(([0, 0, 1, 2, 2, 2, 5, 1], [1, 2, 3, 4, 5, 6, 7, 8]), repeat=2):
        b = [x + 0.5 * (i % 3) for i, x in enumerate(b)]
        assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    x = torch.randn(8, generator=gen).tolist()
    assert spearman(x, x[::-1]) == pytest.approx(stats.spearmanr(x, x[::-1]).statistic, abs=1e-12)
