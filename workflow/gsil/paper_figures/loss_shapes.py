"""Figure 10: the penalty each registered loss puts on the log-ratio, at γ = 0 and at the configured γ.

Nothing here restates a formula: every value comes from calling the function registered in `gsil.losses.LOSSES`
with policy log-probs equal to Δ and reference log-probs 0, so the figure follows the registry (a new or changed
loss shows up as it is). With that input the loss sees

    positive_term = ℓ₊(β·Δ⁺ + γ),   negative_term = ℓ₋(β·Δ⁻ + γ)

for a pointwise (GSIL) loss. Whether a loss is pointwise is found out by probing it, not by its name: its positive
term must depend on Δ⁺ only, its negative term on Δ⁻ only, and the loss must be their sum. A loss that is instead
a function of the margin Δ⁺ − Δ⁻ alone (SPIN, DPO) is drawn against the margin; any other loss is listed with a
note and not drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from gsil.losses import LOSSES, LossFn

POINTWISE = "pointwise"
PAIRWISE = "pairwise"
OTHER = "other"

# The grid spans f = βΔ in [-F_HALF_WIDTH, F_HALF_WIDTH] at γ = 0, whatever β is: the shapes, not β, are the point.
F_HALF_WIDTH = 4.0
GRID_POINTS = 401
# Values reported in the JSON (and checked by tests): at βΔ in these points.
REPORT_POINTS = (-2.0, -1.0, 0.0, 1.0, 2.0)

_TOL = dict(rtol=1e-5, atol=1e-5)


@dataclass
class LossShape:
    """One loss's curves. x is Δ (pointwise) or the margin Δ⁺ − Δ⁻ (pairwise); curves maps a label ('real γ=0',
    'generated γ=2', 'loss γ=0') to the values on x; values maps the same labels to {'βΔ=<p>': value} at
    REPORT_POINTS."""

    name: str
    kind: str
    x: list[float] = field(default_factory=list)
    curves: dict[str, list[float]] = field(default_factory=dict)
    values: dict[str, dict[str, float]] = field(default_factory=dict)
    note: str = ""


def curve_label(side: str, gamma: float) -> str:
    """'real', 'generated' (pointwise) or 'loss' (pairwise) at one γ, e.g. 'real γ=2'."""
    return f"{side} γ={gamma:g}"


def _call(fn: LossFn, positive: torch.Tensor, negative: torch.Tensor, beta: float, gamma: float):
    zeros = torch.zeros_like(positive)
    with torch.no_grad():
        return fn(positive, negative, zeros, zeros, beta=beta, gamma=gamma)


def classify(fn: LossFn, beta: float) -> str:
    """POINTWISE, PAIRWISE or OTHER, from how the loss's outputs respond to Δ⁺ and Δ⁻ moved one at a time."""
    a = torch.linspace(-2.0, 2.0, 9, dtype=torch.float64) / beta
    b = torch.linspace(1.5, -2.5, 9, dtype=torch.float64) / beta
    step = 0.7 / beta
    base = _call(fn, a, b, beta, 0.0)
    negative_moved = _call(fn, a, b + step, beta, 0.0)
    positive_moved = _call(fn, a + step, b, beta, 0.0)
    both_moved = _call(fn, a + step, b + step, beta, 0.0)
    pointwise = (
        torch.allclose(base.positive_term, negative_moved.positive_term, **_TOL)
        and torch.allclose(base.negative_term, positive_moved.negative_term, **_TOL)
        and torch.allclose(base.losses, base.positive_term + base.negative_term, **_TOL)
    )
    if pointwise:
        return POINTWISE
    if torch.allclose(base.losses, both_moved.losses, **_TOL) and not torch.allclose(
        base.losses, negative_moved.losses, **_TOL
    ):
        return PAIRWISE
    return OTHER


def loss_shape(name: str, fn: LossFn, beta: float, gamma: float, points: int = GRID_POINTS) -> LossShape:
    """The curves of one loss at γ = 0 and at `gamma` (one set when gamma is 0) over βΔ in ±F_HALF_WIDTH."""
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite positive number, got {beta!r}")
    kind = classify(fn, beta)
    grid = torch.linspace(-F_HALF_WIDTH, F_HALF_WIDTH, points, dtype=torch.float64) / beta
    shape = LossShape(name=name, kind=kind, x=grid.tolist())
    gammas = [0.0] if gamma == 0 else [0.0, gamma]
    if kind == POINTWISE:
        for g in gammas:
            out = _call(fn, grid, grid, beta, g)
            shape.curves[curve_label("real", g)] = out.positive_term.double().tolist()
            shape.curves[curve_label("generated", g)] = out.negative_term.double().tolist()
            for side in ("real", "generated"):
                shape.values[curve_label(side, g)] = _values_at(fn, kind, beta, g, side)
        shape.note = "ℓ₊ on demonstrations, ℓ₋ on own generations, f = βΔ + γ"
    elif kind == PAIRWISE:
        for g in gammas:
            out = _call(fn, grid, torch.zeros_like(grid), beta, g)
            shape.curves[curve_label("loss", g)] = out.losses.double().tolist()
            shape.values[curve_label("loss", g)] = _values_at(fn, kind, beta, g, "loss")
        at_zero, at_gamma = (torch.tensor(shape.curves[curve_label("loss", g)]) for g in (0.0, gammas[-1]))
        same = torch.allclose(at_zero, at_gamma, **_TOL)
        shape.note = "pairwise: a function of the margin Δ⁺ − Δ⁻" + ("; γ has no effect" if same else "")
    else:
        shape.note = "neither pointwise nor a function of the margin: not drawn"
    return shape


def loss_shapes(beta: float, gamma: float, registry: dict[str, LossFn] | None = None) -> list[LossShape]:
    """One LossShape per registered loss, in registry order."""
    registry = LOSSES if registry is None else registry
    return [loss_shape(name, fn, beta, gamma) for name, fn in registry.items()]


def _values_at(fn: LossFn, kind: str, beta: float, gamma: float, side: str) -> dict[str, float]:
    """One curve's values at βΔ (or β·margin) in REPORT_POINTS, from a fresh call at exactly those points."""
    deltas = torch.tensor(REPORT_POINTS, dtype=torch.float64) / beta
    if kind == POINTWISE:
        out = _call(fn, deltas, deltas, beta, gamma)
        values = out.positive_term if side == "real" else out.negative_term
    else:
        values = _call(fn, deltas, torch.zeros_like(deltas), beta, gamma).losses
    return {f"βΔ={p:g}": float(v) for p, v in zip(REPORT_POINTS, values.double().tolist())}
