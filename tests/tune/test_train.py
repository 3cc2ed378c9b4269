"""Training utilities (eas_method.md §4.1) against hand-computed values and analytic gradients."""
import math

import pytest
import torch
from torch import nn

from eas.adapters.attach import EASConfig, add_adapters, mark_trainable
from eas.errors import CheckpointError
from eas.model.config import LlamaConfig
from eas.model.llama import Llama
from eas.tune.train import (autocast_context, load_checkpoint, load_trainable_state, lr_at, make_optimizer, set_lr,
                            param_groups, save_checkpoint, train_step, trainable_state_dict)


def test_lr_schedule_by_hand():
    lr = lambda step, **kw: lr_at(step, total_steps=100, warmup_steps=10, base_lr=1e-3, **kw)  # noqa: E731
    assert lr(0) == 0.0
    assert lr(5) == pytest.approx(5e-4)
    assert lr(10) == pytest.approx(1e-3)
    assert lr(32.5) == pytest.approx(1e-3 * 0.5 * (1 + 1 / math.sqrt(2)))  # a quarter of the half-cycle
    assert lr(55) == pytest.approx(5e-4)
    assert lr(100) == pytest.approx(0.0, abs=1e-15)
    assert lr(55, min_lr=1e-4) == pytest.approx(1e-4 + 0.5 * 9e-4)
    assert lr(250, min_lr=1e-4) == pytest.approx(1e-4)  # stays at the floor past the end
    assert lr_at(0, 10, 0, 2.0) == 2.0  # no warm-up
    with pytest.raises(ValueError, match="warmup_steps"):
        lr_at(0, 10, 20, 1.0)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.adapter = nn.Linear(3, 4)
        self.gain = nn.Parameter(torch.ones(4))
        self.frozen = nn.Linear(4, 2)
        self.frozen.requires_grad_(False)


def test_scaled_part_gets_its_own_learning_rate():
    """--projector-lr: AdamW's first step moves every weight by its group's rate (|m/sqrt(v)| = 1)."""
    toy = Toy()
    opt = make_optimizer(toy, lr=1e-2, weight_decay=0.0, lr_scales={"adapter.": 0.25})
    assert sorted((g["lr"], len(g["params"])) for g in opt.param_groups) == [(2.5e-3, 1), (2.5e-3, 1), (1e-2, 1)]
    before = {n: p.detach().clone() for n, p in toy.named_parameters() if p.requires_grad}
    (toy.adapter(torch.randn(5, 3, generator=torch.Generator().manual_seed(0))) * toy.gain).sum().backward()
    opt.step()
    moved = {n: (p.detach() - before[n]).abs() for n, p in toy.named_parameters() if p.requires_grad}
    for name, rate in (("adapter.weight", 2.5e-3), ("adapter.bias", 2.5e-3), ("gain", 1e-2)):
        assert torch.allclose(moved[name], torch.full_like(moved[name], rate), rtol=1e-4), name
    set_lr(opt, 0.5)
    assert sorted(g["lr"] for g in opt.param_groups) == [0.125, 0.125, 0.5]


def test_param_groups_follow_timm_rules():
    toy = Toy()
    no_decay, decay = param_groups(toy, 0.02)
    assert [id(p) for p in decay["params"]] == [id(toy.adapter.weight)]
    assert {id(p) for p in no_decay["params"]} == {id(toy.adapter.bias), id(toy.gain)}
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.02, 0.0)

    model = mark_trainable(add_adapters(Llama(LlamaConfig.named("test")), EASConfig(adapter_dim=4, skip_dim=8)))
    opt = make_optimizer(model, lr=1e-3)
    assert opt.defaults["betas"] == (0.9, 0.95)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {g["weight_decay"]: sorted(names[id(p)] for p in g["params"]) for g in opt.param_groups}
    # Per layer: PIA-A has down, router, up_b, up_d; PIA-S also down_pool. Weights decay, biases do not.
    modules = [f"layers.{i}.adapter_attn.{m}" for i in range(4) for m in ("down", "router", "up_b", "up_d")]
    modules += [f"layers.{i}.adapter_skip.{m}" for i in range(4)
                for m in ("down", "down_pool", "router", "up_b", "up_d")]
    assert groups[0.02] == sorted(m + ".weight" for m in modules)
    assert groups[0.0] == sorted(m + ".bias" for m in modules)
    with pytest.raises(ValueError, match="no trainable parameters"):
        make_optimizer(Llama(LlamaConfig.named("test")).requires_grad_(False), lr=1e-3)


def mse(model, batch):
    x, t = batch
    return ((model(x) - t) ** 2).sum(), t.numel()


def test_accumulation_equals_the_concatenated_batch(gen):
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    t = torch.randn(4, 2, generator=gen, dtype=torch.float64)
    start = nn.Linear(3, 2).double()
    w0, b0 = start.weight.detach().clone(), start.bias.detach().clone()
    # Analytic gradient of mean((x W^T + b - t)^2) over all 8 elements.
    d = 2 * (x @ w0.T + b0 - t) / t.numel()
    lr, results = 0.1, []
    for batches in ([(x[:1], t[:1]), (x[1:], t[1:])], [(x, t)]):  # unequal micro-batches
        model = nn.Linear(3, 2).double()
        model.load_state_dict(start.state_dict())
        opt = torch.optim.SGD(model.parameters(), lr=123.0)  # the schedule must override this
        loss = train_step(model, mse, opt, batches, step=2, schedule=lambda s: 0.05 * s)
        assert opt.param_groups[0]["lr"] == lr
        results.append((loss, model.weight.detach(), model.bias.detach()))
    for loss, w, b in results:
        assert loss == pytest.approx(((x @ w0.T + b0 - t) ** 2).mean().item(), rel=1e-12)
        assert torch.allclose(w, w0 - lr * d.T @ x, atol=1e-12)
        assert torch.allclose(b, b0 - lr * d.sum(0), atol=1e-12)


def test_non_finite_loss_leaves_the_parameters_alone(gen):
    model = nn.Linear(3, 2)
    batch = (torch.randn(4, 3, generator=gen), torch.randn(4, 2, generator=gen))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(FloatingPointError, match="step 7"):
        train_step(model, lambda m, b: (mse(m, b)[0] * float("inf"), 1), torch.optim.SGD(model.parameters(), lr=1.0),
                   [batch], 7)
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_bf16_autocast_rounds_the_product_like_bf16(gen):
    """The --dtype bfloat16 path: products in bf16 (the bf16 product of the bf16-rounded inputs);
    float32 left exact."""
    a, b = torch.randn(8, 16, generator=gen), torch.randn(16, 4, generator=gen)
    with autocast_context(torch.device("cpu"), torch.bfloat16):
        low = a @ b
    with autocast_context(torch.device("cpu"), torch.float32):
        full = a @ b
    assert low.dtype == torch.bfloat16 and torch.equal(low, a.bfloat16() @ b.bfloat16())
    assert full.dtype == torch.float32 and torch.equal(full, a @ b)
    assert (low.float() - full).abs().max() > 1e-4  # bf16 rounding is visible at this size


def test_checkpoint_is_atomic_and_errors_name_the_file(tmp_path):
    model = nn.Linear(3, 2)
    path = tmp_path / "run" / "ckpt.pt"
    save_checkpoint(path, {"model": model.state_dict(), "meta": {"skip": [1, 2]}})
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]
    good = path.read_bytes()
    state = load_checkpoint(path, required=("model", "meta"))
    assert state["meta"] == {"skip": [1, 2]} and torch.equal(state["model"]["weight"], model.weight)

    with pytest.raises(Exception):
        save_checkpoint(path, {"bad": lambda: None})  # unpicklable: the save fails midway
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"] and path.read_bytes() == good

    with pytest.raises(CheckpointError, match=f"{path} lacks other"):
        load_checkpoint(path, required=("model", "other"))
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=f"{path} is unreadable or corrupt"):
        load_checkpoint(path)
    path.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist()))
    with pytest.raises(CheckpointError, match=f"{path} is unreadable or corrupt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=str(tmp_path / "missing.pt")):
        load_checkpoint(tmp_path / "missing.pt")


def test_trainable_state_round_trip():
    toy = Toy()
    state = trainable_state_dict(toy)
    assert set(state) == {"adapter.weight", "adapter.bias", "gain"}
    other = Toy()
    load_trainable_state(other, state)
    assert all(torch.equal(getattr(other.adapter, k), getattr(toy.adapter, k)) for k in ("weight", "bias"))
    with pytest.raises(CheckpointError, match="missing \\['gain'\\]"):
        load_trainable_state(other, {k: v for k, v in state.items() if k != "gain"})
