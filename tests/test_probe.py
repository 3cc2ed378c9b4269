"""The linear-probe ceiling (eas/probe.py) against separable data, a plain gradient-descent optimum
and the model's own image path."""

import pytest
import torch

from eas.model.config import LavinConfig
from eas.model.lavin import Lavin
from eas.probe import fit, image_features, objective, probe


def blobs(gen, n, classes=3, dim=5, spread=0.3):
    centres = 3 * torch.randn(classes, dim, generator=gen)
    y = torch.arange(n) % classes
    return centres[y] + spread * torch.randn(n, dim, generator=gen), y


def test_separable_classes_are_probed_perfectly_and_noise_is_not(gen):
    x, y = blobs(gen, 90)
    xt, yt = blobs(torch.Generator().manual_seed(0), 60)  # same centres: same seed as `gen`
    got = probe(x, y, xt, yt, 3)
    assert got["test_accuracy"] == 100.0 and got["features"] == 5
    noise = probe(torch.randn(90, 5, generator=gen), y, torch.randn(300, 5, generator=gen), torch.arange(300) % 3, 3)
    assert noise["test_accuracy"] < 55  # chance is 33 %


def test_lbfgs_reaches_the_minimum_plain_gradient_descent_finds(gen):
    x, y = blobs(gen, 40, spread=2.0)
    lam = 0.1
    w = fit(x, y, 3, lam)
    xb = torch.cat([x, torch.ones(40, 1)], 1).double()
    ref = torch.zeros(6, 3, dtype=torch.float64, requires_grad=True)
    for _ in range(5000):  # the convex objective, by the simplest method there is
        loss = objective(ref, xb, y, lam)
        (g,) = torch.autograd.grad(loss, ref)
        ref = (ref - 0.5 * g).detach().requires_grad_(True)
    assert objective(w, xb, y, lam).item() == pytest.approx(objective(ref.detach(), xb, y, lam).item(), abs=1e-7)
    assert torch.allclose(w, ref.detach(), atol=1e-4)


def test_features_are_what_the_llm_and_a_llava_projector_read(gen):
    model = Lavin(LavinConfig.named("test")).init_weights(gen).eval()
    pixels = torch.randn(2, 3, 32, 32, generator=gen)
    f = image_features(model, pixels)
    with torch.no_grad():
        tokens = model.image_tokens(pixels)
        patches = model.visual.hidden(pixels, model.cfg.vision.layers - 1)[:, 1:]
    assert torch.equal(f["lavin_tokens"], tokens.flatten(1))
    assert torch.equal(f["patch_mean"], patches.mean(1))
    assert f["cls_taps"].shape == (2, len(model.cfg.tap_blocks) * model.cfg.vision.width)
