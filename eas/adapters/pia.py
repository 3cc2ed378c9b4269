"""Propagation-of-Information Adapter (PIA), eas_method.md §1.

One class serves both variants:
  PIA-A (adaptation, ``pooled=False``): H_n = W_A x̂_n + b_A
  PIA-S (skip,       ``pooled=True``):  H_n = ½ (W_C x̂_n + b_C + ū),  ū = mean_prompt(W_A x̂ + b_A)
  PIA(x̂)_n = x̂_n + Δ_n,  Δ_n = s [w_1 (U_B H_n + c_B) + w_2 (U_D H_n + c_D)],  w = softmax((W_r m + b_r) / τ)
with m the mean of x̂ over the routed prompt positions and U_B, U_D block-diagonal (grouped).
The module returns Δ; callers add x̂ (Δ alone replaces a skipped FFN or layer).
The token path is affine, which is what makes the merge exact: each PIA folds itself into the
weights that read its output (``fold_static``, ``fold_routed``; eas_method.md §2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from eas.errors import UsageError
from eas.model.config import dtype_name

# A static fold solves with I + M (fold_static), and where I + M is near singular that amplifies
# the adapter's constant (or up-projection) by a gain g: stored with p significant bits, the folded
# term keeps p - log2(g) of them. It refuses a gain that would keep fewer than this many: float16
# accepts up to 64x, bfloat16 8x, float32 524288x (fold_limit), about the same error added in each.
# Measured (tests/adapters/test_merge.py's cancelling adapter): stored in float16 or bfloat16, the
# merge's logits err 1.2-1.4x as much as the unmerged model's stored alike at 10-20x, 2.6x at 50x,
# 6-7x at 100x. Trained adapters fold at ~1-2x, but the default job's fine-tuned PIA-S of layer 5
# folded at 16.9x on 12-02 (its up-projection at 9.5x); its static merge, stored in float16,
# scored 28.96 % on the synthetic test split, as the unmerged model did.
FOLD_BITS_KEPT = 5


def fold_limit(dtype: torch.dtype) -> float:
    """The largest gain a static fold may apply to a merge computed or stored in `dtype` (FOLD_BITS_KEPT)."""
    return 2.0 ** (1 - FOLD_BITS_KEPT) / torch.finfo(dtype).eps


@dataclass
class FoldBound:
    """The coarsest dtype a static merge is computed or stored in, and the largest gain its folds
    applied (recorded in merged.pt: check_fold_dtype refuses to cast it coarser later)."""
    dtype: torch.dtype
    gain: float = 1.0

    def admit(self, gain: float, where: str) -> None:
        limit = fold_limit(self.dtype)
        if not gain <= limit:
            raise UsageError(f"static merge of {where}: I + M is (nearly) singular, the adapter cancels part of "
                             f"its input, and moving its constant onto the norm would amplify it {gain:.3g}x "
                             f"(at most {limit:g}x is accepted for a merge computed or stored in "
                             f"{dtype_name(self.dtype)}, keeping {FOLD_BITS_KEPT} of its significant bits); its "
                             f"unmerged and dynamic forms are exact")
        self.gain = max(self.gain, gain)


def check_fold_dtype(fold_gain: float | None, dtype: torch.dtype, what: str) -> None:
    """Refuse to hold a static merge whose folds amplified by `fold_gain` in a dtype too coarse for it."""
    if fold_gain is not None and fold_gain > fold_limit(dtype):
        raise UsageError(f"{what}: its static merge folded an adapter at {fold_gain:.3g}x, too much to keep "
                         f"{FOLD_BITS_KEPT} significant bits in {dtype_name(dtype)} (at most {fold_limit(dtype):g}x); "
                         f"keep it in a wider dtype, or tune with --merge dynamic")


def _gain(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out‖ / ‖ref‖ (0/0 = 1)."""
    a, b = out.norm().item(), ref.norm().item()
    return a / b if b > 0 else (1.0 if a == 0 else math.inf)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x [B, T, C] over positions where mask [B, T] is True."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class GroupedLinear(nn.Module):
    """Block-diagonal affine map (a grouped 1x1 conv): output group g reads only input group g."""

    def __init__(self, in_features: int, out_features: int, groups: int):
        super().__init__()
        if in_features % groups or out_features % groups:
            raise ValueError(f"grouped projection {in_features}->{out_features} not divisible by {groups} groups")
        self.groups = groups
        self.weight = nn.Parameter(torch.zeros(out_features, in_features // groups))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        hg = h.unflatten(-1, (self.groups, -1))
        wg = self.weight.unflatten(0, (self.groups, -1))
        return torch.einsum("...gi,goi->...go", hg, wg).flatten(-2) + self.bias

    def dense(self) -> torch.Tensor:
        """The equivalent [out, in] matrix (rank <= in): used only by the merge."""
        return torch.block_diag(*self.weight.unflatten(0, (self.groups, -1)))


class SeededDropout(nn.Module):
    """Dropout whose mask comes from an explicit generator (eas.adapters.attach.set_dropout_generator).

    Same draws as torch's CPU dropout on a global generator in the same state, so a run seeded
    through a generator reproduces one seeded through torch.manual_seed. Without a generator it
    is plain dropout on torch's global generator."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.generator is None:
            return F.dropout(x, self.p, True)
        keep = torch.empty_like(x).bernoulli_(1 - self.p, generator=self.generator)
        return x * keep.div_(1 - self.p)


def reset_linear(linear: nn.Linear, generator: torch.Generator | None) -> None:
    """nn.Linear's own initialisation, drawn from `generator` (same numbers as after torch.manual_seed)."""
    nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5), generator=generator)
    bound = 1 / math.sqrt(linear.in_features)
    nn.init.uniform_(linear.bias, -bound, bound, generator=generator)


@dataclass
class PIAState:
    """Per-example quantities frozen at prefill: router weights [B, 2], pooled hidden ū [B, r] or None."""
    route: torch.Tensor
    pooled: torch.Tensor | None


class RoutedDown(nn.Module):
    """The input side shared by PIA and its merged dynamic form: router and down projection(s)."""

    def __init__(self, dim: int, hidden: int, pooled: bool, temperature: float, dropout: float = 0.0):
        super().__init__()
        self.temperature = temperature
        self.down = nn.Linear(dim, hidden)                         # W_A (PIA-A) / W_C (PIA-S)
        self.down_pool = nn.Linear(dim, hidden) if pooled else None  # W_A of PIA-S, applied before pooling
        self.router = nn.Linear(dim, 2)
        self.dropout = SeededDropout(dropout)
        # Task constants replacing the router (static merge); None = route per example.
        self.register_buffer("fixed_route", None)

    def context(self, xn: torch.Tensor, pool_mask: torch.Tensor, route_mask: torch.Tensor) -> PIAState:
        """Router weights and pooled hidden from the prompt positions of x̂ [B, T, C]."""
        if self.fixed_route is not None:
            route = self.fixed_route.to(xn.dtype).expand(xn.shape[0], 2)
        else:
            logits = self.router(masked_mean(xn, route_mask)).float()
            route = F.softmax(logits / self.temperature, -1).type_as(xn)
        pooled = None
        if self.down_pool is not None:
            pooled = self.down_pool(masked_mean(xn, pool_mask))
        return PIAState(route, pooled)

    def frozen_context(self, xn: torch.Tensor, ctx, name: str) -> PIAState:
        """context() on the pass's prompt positions (eas.model.llama.Context); with an inference
        state it is computed at prefill, stored as `name`.route / `name`.pooled and read at decode."""
        route_mask = ctx.prompt_mask & ctx.key_mask  # LaVIN's modality token is pooled, not routed on
        if ctx.state is None:
            return self.context(xn, ctx.prompt_mask, route_mask)
        if not ctx.decoding:
            fresh = self.context(xn, ctx.prompt_mask, route_mask)
            ctx.state[f"{name}.route"] = fresh.route
            if fresh.pooled is not None:
                ctx.state[f"{name}.pooled"] = fresh.pooled
        return PIAState(ctx.state[f"{name}.route"], ctx.state[f"{name}.pooled"] if self.down_pool is not None else None)

    def hidden(self, xn: torch.Tensor, state: PIAState) -> torch.Tensor:
        h = self.down(xn)
        if state.pooled is not None:
            h = self.pool_mix * (h + state.pooled[:, None])
        return self.dropout(h)

    pool_mix = 0.5  # PIA-S averages its per-token and pooled paths


class PIA(RoutedDown):
    def __init__(self, dim: int, hidden: int, pooled: bool, groups: int = 2, temperature: float = 10.0,
                 scale: float = 1.0, dropout: float = 0.1, generator: torch.Generator | None = None):
        super().__init__(dim, hidden, pooled, temperature, dropout)
        self.scale = scale
        self.up_b = GroupedLinear(hidden, dim, groups)
        self.up_d = GroupedLinear(hidden, dim, groups)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Xavier down projections, zero up projections (the adapter starts as the identity map);
        the router keeps nn.Linear's init. Draw order: down, down_pool, router, then Xavier."""
        linears = [lin for lin in (self.down, self.down_pool, self.router) if lin is not None]
        for lin in linears:
            reset_linear(lin, generator)
        for lin in (self.down, self.down_pool):
            if lin is not None:
                nn.init.xavier_uniform_(lin.weight, generator=generator)
                nn.init.zeros_(lin.bias)
        for up in (self.up_b, self.up_d):
            nn.init.zeros_(up.weight)
            nn.init.zeros_(up.bias)

    def forward(self, xn: torch.Tensor, state: PIAState) -> torch.Tensor:
        """Δ, the adapter's correction: PIA(x̂) = x̂ + Δ where it adapts or replaces attention, Δ
        alone where it replaces a whole FFN or layer (the `ffn`/`layer` units)."""
        h = self.hidden(xn, state)
        w = state.route[:, None]
        return self.scale * (w[..., :1] * self.up_b(h) + w[..., 1:] * self.up_d(h))

    # ---- re-parameterization (eas_method.md §2.2-2.3): every update is a rank-r product (W M_u) M_d,
    # never a C x C matrix.
    def up_parts(self):
        """Dense block-diagonal up matrices [C, r] and their biases, the scale folded in."""
        s = self.scale
        return s * self.up_b.dense(), s * self.up_d.dense(), s * self.up_b.bias, s * self.up_d.bias

    def fold_static(self, weights: list[torch.Tensor], half: bool, where: str,
                    bound: FoldBound) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """([W'], P, s): routing fixed to fixed_route, PIA(x̂) = (I + M)(x̂ + P p + s) exactly, so
        each W [out, C] that reads PIA(x̂) becomes W' = W (I + M) reading x̂ + P p + s: the
        adapter's constant part moves onto its input, where the norm adds it (no output bias).

        M = M_u M_d, s = (I + M)⁻¹ (M_u β_d + β_u), P = (I + M)⁻¹ M_u = M_u (I_r + M_d M_u)⁻¹ [C, r]
        (Woodbury: only an r x r inverse), with M_u = Σ w_j U_j, β_u = Σ w_j c_j and (M_d, β_d)
        the down projection, halved for PIA-S (`half`), whose pooled hidden p = ½ ū is per example.
        `where` names the adapter in the error raised when I + M is (nearly) singular: when the fold
        amplifies M_u or the constant more than `bound` admits (FoldBound)."""
        if self.fixed_route is None:
            raise ValueError("a static fold needs router constants: run eas.adapters.calibrate.calibrate_routes first")
        w = self.fixed_route.double()
        ub, ud, cb, cd = (t.double() for t in self.up_parts())
        m_u, beta_u = w[0] * ub + w[1] * ud, w[0] * cb + w[1] * cd
        mix = self.pool_mix if half else 1.0
        m_d, beta_d = mix * self.down.weight.double(), mix * self.down.bias.double()
        inner = torch.eye(m_d.shape[0], dtype=torch.float64, device=m_d.device) + m_d @ m_u
        beta = m_u @ beta_d + beta_u
        try:  # P = M_u inner⁻¹, i.e. inner^T P^T = M_u^T
            p = torch.linalg.solve(inner.T, m_u.T).T
            s = beta - p @ (m_d @ beta)
            gain = max(_gain(p, m_u), _gain(s, beta))
        except torch.linalg.LinAlgError:
            gain = math.inf
        bound.admit(gain, where)
        m_u, m_d = m_u.float(), m_d.float()
        return [W + (W @ m_u) @ m_d for W in weights], p.float(), s.float()

    def fold_routed(self, weights: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """State of the RoutedDelta (eas/adapters/merged.py) that adds Σ_j w_j (W U_j H + W c_j) to
        the outputs of the stacked weights, routing per example."""
        ub, ud, cb, cd = self.up_parts()
        state = {k: v.float() for k, v in self.state_dict().items() if k.startswith(("down", "router"))}
        state["up"] = torch.cat([torch.cat((W @ ub, W @ ud), 1) for W in weights])
        state["route_bias"] = torch.cat([torch.stack((W @ cb, W @ cd), 1) for W in weights])
        return state
