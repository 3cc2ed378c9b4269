"""A linear-probe ceiling: how well can the frozen base's image features, as the LLM receives them,
name the class at all? Multinomial logistic regression (L2, full-batch L-BFGS) on standardised
features; the L2 strength is chosen by k-fold cross-validation on the training examples only.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1)


@torch.no_grad()
def image_features(model, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    """{kind: [N, F]} of a LaVIN base for pixels [N, 3, S, S]:
    lavin_tokens  the n_visual_tokens image tokens after the projector, what LaVIN's LLM reads (flattened);
    cls_taps      the CLS taps before the projector (flattened);
    patch_mean    the penultimate block's patch tokens, what a LLaVA projector reads, mean-pooled.
    (All patch tokens flattened, 64 x 192 features on the tiny base, probed to 37 % with one seed
    and cost minutes of CPU: left out.)"""
    visual = model.visual
    taps = visual(pixels, model.cfg.tap_blocks)
    patches = visual.hidden(pixels, visual.cfg.layers - 1)[:, 1:]
    return {"lavin_tokens": model.adapter_proj(taps).flatten(1).float(), "cls_taps": taps.flatten(1).float(),
            "patch_mean": patches.mean(1).float()}


def fit(x: torch.Tensor, y: torch.Tensor, n_classes: int, lam: float, iters: int = 200) -> torch.Tensor:
    """Weights [F + 1, C] minimising mean cross-entropy + lam/2 ||W||² (bias not penalised)."""
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1).double()
    w = torch.zeros(xb.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=iters, history_size=20, tolerance_grad=1e-9,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = objective(w, xb, y, lam)
        loss.backward()
        return loss
    opt.step(closure)
    return w.detach()


def objective(w: torch.Tensor, xb: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(xb @ w, y) + 0.5 * lam * (w[:-1] ** 2).sum()


def accuracy(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1).double()
    return 100.0 * ((xb @ w).argmax(1) == y).double().mean().item()


def standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    return [(t - mean) / std for t in (train, *others)]


def probe(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
          n_classes: int, lambdas: Sequence[float] = LAMBDAS, folds: int = 5) -> dict:
    """{test accuracy (%), train accuracy, chosen lambda, cross-validated accuracy per lambda}."""
    order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0))
    parts = order.chunk(folds)
    cv = {}
    for lam in lambdas:
        scores = []
        for i, held in enumerate(parts):
            kept = torch.cat([p for j, p in enumerate(parts) if j != i])
            tr, te = standardise(x_train[kept], x_train[held])
            scores.append(accuracy(fit(tr, y_train[kept], n_classes, lam), te, y_train[held]))
        cv[lam] = sum(scores) / len(scores)
    best = max(lambdas, key=lambda lam: (cv[lam], lam))
    tr, te = standardise(x_train, x_test)
    w = fit(tr, y_train, n_classes, best)
    return {"test_accuracy": accuracy(w, te, y_test), "train_accuracy": accuracy(w, tr, y_train),
            "lambda": best, "cv_accuracy": {str(k): v for k, v in cv.items()}, "features": x_train.shape[1]}
