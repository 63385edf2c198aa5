"""Figure 1 as a toy experiment: a bimodal 1-D data distribution fitted by one Gaussian, by SFT's objective and by
GSIL's self-imitation loop.

The data distribution is a two-component Gaussian mixture (DATA); the model is N(μ, σ²) with parameters μ and
log σ; the "demonstrations" are `n` samples of the data distribution, drawn once.

- SFT / maximum likelihood (`fit_mle`): minimise the mean negative log-likelihood of the demonstrations (the
  empirical forward KL, KL(data || model), up to a constant). The optimum is the sample mean and the sample standard
  deviation (ddof 0); it is found here by L-BFGS, so that tests can check the optimiser against the closed form.
- GSIL (`gsil_loop`): round t starts from p_θt, draws `n` samples of p_θt (the self-generated side), and trains θ
  from θt for `steps_per_round` full-batch Adam steps on the registered loss, called exactly as the trainer calls it:
  policy log-probs log p_θ(x), reference log-probs log p_θt(x), on the demonstrations (positive / real side) and on
  the own samples (negative / generated side), so f = β·log(p_θ/p_θt) + γ. The model after the round is p_θ(t+1).
  There is no separate classifier: as in GSIL, the density-ratio estimator is f_θ itself and fitting it by logistic
  classification IS the policy update.
- Reference (`reverse_kl_optimum`): the Gaussian that minimises KL(model || data), the mode-seeking fit the paper's
  motivation asks for, found by L-BFGS on the numerically integrated divergence started from each mixture component
  and from the MLE (the best of these is kept).

Every fit is scored by KL(data || model) and KL(model || data), integrated by the trapezoid rule on a grid that is
fine on the data's scale and on the model's (`kl_divergences`).

`round_gradient` is the diagnostic that explains what the loop does: the gradient of round t's objective at θ = θt,
with the generated side's expectation taken exactly (Gauss–Hermite) instead of by sampling. It equals
β·ℓ₊'(γ)·E_data[∇ log p_θt] + β·ℓ₋'(γ)·E_p_θt[∇ log p_θt], and the second expectation is zero, so θt is a stationary
point of its own round exactly when it is a stationary point of the likelihood: the MLE is the loop's fixed point
(for a pointwise loss with ℓ₊'(γ) ≠ 0), whatever β and γ are. Whether the loop gets there, and how steadily, is
what the experiment shows.

Deterministic: one seeded torch.Generator draws the demonstrations, and each GSIL run draws its own samples from a
generator seeded with seed + 1 + its index; float64 parameters, full-batch steps.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor

from gsil.losses import get_loss

log = logging.getLogger("gsil.paper_figures.toy")

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass(frozen=True)
class Mixture:
    """A 1-D Gaussian mixture: weights (summing to 1), means, standard deviations."""

    weights: tuple[float, ...]
    means: tuple[float, ...]
    stds: tuple[float, ...]

    def __post_init__(self) -> None:
        if not (len(self.weights) == len(self.means) == len(self.stds) >= 1):
            raise ValueError("a mixture needs as many weights, means and stds, at least one")
        if abs(sum(self.weights) - 1.0) > 1e-9 or min(self.weights) <= 0 or min(self.stds) <= 0:
            raise ValueError(f"mixture weights must be positive and sum to 1, stds positive: {self}")

    def _tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        as_t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
        return as_t(self.weights), as_t(self.means), as_t(self.stds)

    def log_prob(self, x: Tensor) -> Tensor:
        w, m, s = self._tensors()
        z = (x.double()[..., None] - m) / s
        return torch.logsumexp(torch.log(w) - 0.5 * z * z - torch.log(s) - _LOG_SQRT_2PI, dim=-1)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        w, m, s = self._tensors()
        component = torch.multinomial(w, n, replacement=True, generator=generator)
        return m[component] + s[component] * torch.randn(n, generator=generator, dtype=torch.float64)

    def grid(self, per_std: int = 40, half_width: float = 12.0) -> Tensor:
        """A uniform grid over every component ± half_width stds, with per_std points per narrowest std."""
        lo = min(m - half_width * s for m, s in zip(self.means, self.stds))
        hi = max(m + half_width * s for m, s in zip(self.means, self.stds))
        points = int(math.ceil((hi - lo) / min(self.stds) * per_std)) + 1
        return torch.linspace(lo, hi, points, dtype=torch.float64)


# Two well-separated modes of unequal weight, chosen from the reverse-KL landscape alone: KL(model || data) over
# Gaussians has its minima at the two modes only. A closer pair (means ±2, stds 0.6/0.8) also has a broad local
# minimum between the modes, which would blur what "mode-seeking" means; GSIL's loop ends near the MLE there too.
DATA = Mixture(weights=(0.6, 0.4), means=(-3.0, 3.0), stds=(0.6, 0.8))


@dataclass(frozen=True)
class ToySettings:
    """Everything but β, γ, the seed and the loss that the toy's result depends on (recorded in its JSON)."""

    data: Mixture = DATA
    n: int = 1000  # demonstrations; each GSIL round draws as many own samples
    rounds: int = 20
    steps_per_round: int = 40  # full-batch Adam steps per round (the trainer's "one epoch" of a round)
    lr: float = 0.05
    init_mean: float = 0.0  # the "base model" every fit starts from
    init_std: float = 1.0
    hermite_nodes: int = 64  # Gauss–Hermite nodes of round_gradient's exact generated-side expectation


def gaussian_log_prob(x: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    z = (x - mean) / torch.exp(log_std)
    return -0.5 * z * z - log_std - _LOG_SQRT_2PI


def kl_divergences(data: Mixture, mean: float, std: float) -> tuple[float, float]:
    """(KL(data || model), KL(model || data)) for model N(mean, std²), trapezoid rule on the data's grid merged with
    a grid of ±12 model stds (so a very narrow or very broad model is integrated as finely as the data)."""
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        return math.nan, math.nan
    model_grid = mean + std * torch.linspace(-12.0, 12.0, 2401, dtype=torch.float64)
    x = torch.unique(torch.cat([data.grid(), model_grid]), sorted=True)
    log_p = data.log_prob(x)
    log_q = gaussian_log_prob(x, torch.tensor(mean, dtype=torch.float64),
                              torch.tensor(math.log(std), dtype=torch.float64))
    forward = torch.trapezoid(torch.exp(log_p) * (log_p - log_q), x)
    reverse = torch.trapezoid(torch.exp(log_q) * (log_q - log_p), x)
    return float(forward), float(reverse)


def _lbfgs(objective, mean: float, log_std: float, max_iter: int = 500) -> tuple[float, float]:
    params = [torch.tensor(float(mean), dtype=torch.float64, requires_grad=True),
              torch.tensor(float(log_std), dtype=torch.float64, requires_grad=True)]
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-13,
                                  history_size=20, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        value = objective(*params)
        value.backward()
        return value

    optimizer.step(closure)
    return float(params[0].detach()), float(params[1].detach())


def fit_mle(samples: Tensor, init_mean: float = 0.0, init_std: float = 1.0) -> tuple[float, float]:
    """(μ, σ) maximising the mean log-likelihood of `samples` (SFT's objective), by L-BFGS from the given start."""
    samples = samples.double()
    mean, log_std = _lbfgs(lambda m, ls: -gaussian_log_prob(samples, m, ls).mean(), init_mean, math.log(init_std))
    return mean, math.exp(log_std)


def reverse_kl_optimum(data: Mixture, starts: list[tuple[float, float]]) -> tuple[float, float]:
    """(μ, σ) minimising KL(model || data) (grid integral), the best L-BFGS result over the (μ, σ) starts."""
    x = data.grid()
    log_p = data.log_prob(x)

    def reverse_kl(mean: Tensor, log_std: Tensor) -> Tensor:
        log_q = gaussian_log_prob(x, mean, log_std)
        return torch.trapezoid(torch.exp(log_q) * (log_q - log_p), x)

    best = None
    for start_mean, start_std in starts:
        mean, log_std = _lbfgs(reverse_kl, start_mean, math.log(start_std))
        value = kl_divergences(data, mean, math.exp(log_std))[1]
        if math.isfinite(value) and (best is None or value < best[0]):
            best = (value, mean, math.exp(log_std))
    if best is None:
        raise RuntimeError("no start of the reverse-KL fit converged to a finite value")
    return best[1], best[2]


def round_gradient(samples: Tensor, mean_t: float, std_t: float, loss_name: str, beta: float, gamma: float,
                   nodes: int = 64) -> tuple[float, float]:
    """∇(μ, log σ) of GSIL round t's objective at θ = θt = (mean_t, log std_t): the real side averaged over
    `samples`, the generated side's expectation under p_θt taken by Gauss–Hermite quadrature (exact for the
    Gaussian's score). Meaningful for pointwise losses (positive and negative terms separate)."""
    loss_fn = get_loss(loss_name)
    mean = torch.tensor(mean_t, dtype=torch.float64, requires_grad=True)
    log_std = torch.tensor(math.log(std_t), dtype=torch.float64, requires_grad=True)
    ref_mean, ref_log_std = mean.detach().clone(), log_std.detach().clone()
    x = samples.double()
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    y = ref_mean + torch.exp(ref_log_std) * torch.tensor(z, dtype=torch.float64)
    weights = torch.tensor(w / w.sum(), dtype=torch.float64)
    real = loss_fn(gaussian_log_prob(x, mean, log_std), gaussian_log_prob(x, mean, log_std),
                   gaussian_log_prob(x, ref_mean, ref_log_std), gaussian_log_prob(x, ref_mean, ref_log_std),
                   beta=beta, gamma=gamma).positive_term.double().mean()
    generated = loss_fn(gaussian_log_prob(y, mean, log_std), gaussian_log_prob(y, mean, log_std),
                        gaussian_log_prob(y, ref_mean, ref_log_std), gaussian_log_prob(y, ref_mean, ref_log_std),
                        beta=beta, gamma=gamma).negative_term.double()
    (real + (weights * generated).sum()).backward()
    return float(mean.grad), float(log_std.grad)


@dataclass
class RoundRecord:
    """The model after `round` rounds (round 0: the start), with the last step's loss terms and mean log-ratios."""

    round: int
    mean: float
    std: float
    kl_data_model: float
    kl_model_data: float
    loss: float | None = None
    loss_real: float | None = None
    loss_generated: float | None = None
    rewards_real: float | None = None  # mean Δ on the demonstrations after the round (Figure 2's rewards/real)
    rewards_generated: float | None = None


@dataclass
class GsilRun:
    label: str
    loss: str
    beta: float
    gamma: float
    rounds: list[RoundRecord] = field(default_factory=list)
    stopped: str | None = None  # why the loop ended early (non-finite parameters), else None


def gsil_loop(samples: Tensor, loss_name: str, beta: float, gamma: float, settings: ToySettings,
              generator: torch.Generator, label: str | None = None) -> GsilRun:
    """Run `settings.rounds` rounds of GSIL self-imitation from the base model (see the module docstring)."""
    loss_fn = get_loss(loss_name)
    data = settings.data
    x = samples.double()
    mean = torch.tensor(settings.init_mean, dtype=torch.float64, requires_grad=True)
    log_std = torch.tensor(math.log(settings.init_std), dtype=torch.float64, requires_grad=True)
    run = GsilRun(label=label or f"GSIL-{loss_name} β={beta:g} γ={gamma:g}", loss=loss_name, beta=beta, gamma=gamma)
    run.rounds.append(RoundRecord(0, settings.init_mean, settings.init_std,
                                  *kl_divergences(data, settings.init_mean, settings.init_std)))
    for round_index in range(1, settings.rounds + 1):
        ref_mean, ref_log_std = mean.detach().clone(), log_std.detach().clone()
        noise = torch.randn(x.shape[0], generator=generator, dtype=torch.float64)
        y = ref_mean + torch.exp(ref_log_std) * noise  # own samples of p_θt
        ref_positive = gaussian_log_prob(x, ref_mean, ref_log_std)
        ref_negative = gaussian_log_prob(y, ref_mean, ref_log_std)
        optimizer = torch.optim.Adam([mean, log_std], lr=settings.lr)
        out = None
        for _ in range(settings.steps_per_round):
            optimizer.zero_grad()
            out = loss_fn(gaussian_log_prob(x, mean, log_std), gaussian_log_prob(y, mean, log_std), ref_positive,
                          ref_negative, beta=beta, gamma=gamma)
            out.losses.mean().backward()
            optimizer.step()
        m, s = float(mean.detach()), float(torch.exp(log_std.detach()))
        if not (math.isfinite(m) and math.isfinite(s) and s > 0):
            run.stopped = f"non-finite parameters after round {round_index} (μ={m}, σ={s})"
            log.warning("%s: %s", run.label, run.stopped)
            break
        with torch.no_grad():
            rewards_positive = float((gaussian_log_prob(x, mean, log_std) - ref_positive).mean())
            rewards_negative = float((gaussian_log_prob(y, mean, log_std) - ref_negative).mean())
        run.rounds.append(RoundRecord(  # the record (paper_figures.json) keeps the paper's words: real, generated
            round_index, m, s, *kl_divergences(data, m, s),
            loss=float(out.losses.detach().mean()), loss_real=float(out.positive_term.detach().mean()),
            loss_generated=float(out.negative_term.detach().mean()), rewards_real=rewards_positive,
            rewards_generated=rewards_negative,
        ))
    return run


def gsil_settings(beta: float, gamma: float) -> list[tuple[float, float]]:
    """The (β, γ) pairs the toy runs: β = 1, γ = 0 (the exact reverse-KL temperature of the paper's derivation,
    no shift) and the configured pair, once if they are the same."""
    pairs = [(1.0, 0.0), (float(beta), float(gamma))]
    return list(dict.fromkeys(pairs))


def run_toy(beta: float, gamma: float, seed: int, loss_name: str = "logistic",
            settings: ToySettings | None = None, pointwise: bool = True) -> dict:
    """The whole experiment as a JSON-able dict: settings, data summary, fits (table rows), GSIL runs by round,
    and the fixed-point diagnostic. `pointwise` says whether the loss is a GSIL (pointwise) loss, as
    `loss_shapes.classify` finds; for a pairwise one (SPIN, DPO) the same loop runs, labelled as such, and the
    diagnostic (which needs separate real and generated terms) is left out."""
    settings = settings or ToySettings()
    data = settings.data
    samples = data.sample(settings.n, torch.Generator().manual_seed(seed))
    sample_mean = float(samples.mean())
    sample_std = float(samples.std(correction=0))

    mle_mean, mle_std = fit_mle(samples, settings.init_mean, settings.init_std)
    starts = [(m, s) for m, s in zip(data.means, data.stds)] + [(mle_mean, mle_std)]
    rev_mean, rev_std = reverse_kl_optimum(data, starts)

    runs = []
    name = f"GSIL-{loss_name}" if pointwise else f"{loss_name} (pairwise)"
    for index, (b, g) in enumerate(gsil_settings(beta, gamma)):
        generator = torch.Generator().manual_seed(seed + 1 + index)
        run = gsil_loop(samples, loss_name, b, g, settings, generator, label=f"{name} β={b:g} γ={g:g}")
        log.info("%s: final μ=%.4f σ=%.4f KL(data||model)=%.4f KL(model||data)=%.4f%s", run.label,
                 run.rounds[-1].mean, run.rounds[-1].std, run.rounds[-1].kl_data_model, run.rounds[-1].kl_model_data,
                 f" ({run.stopped})" if run.stopped else "")
        runs.append(run)

    def fit_row(name: str, objective: str, mean: float, std: float, note: str = "") -> dict:
        forward, reverse = kl_divergences(data, mean, std)
        return {"fit": name, "objective": objective, "mean": mean, "std": std, "kl_data_model": forward,
                "kl_model_data": reverse, "note": note}

    fits = [
        fit_row("base model (start of every fit)", "—", settings.init_mean, settings.init_std),
        fit_row("SFT (maximum likelihood)", "forward KL on demonstrations", mle_mean, mle_std,
                f"sample mean {sample_mean:.4f}, sample std {sample_std:.4f}"),
    ]
    for run in runs:
        last = run.rounds[-1]
        stds = [r.std for r in run.rounds[1:]]
        note = f"after round {last.round} of {settings.rounds}" + (f"; {run.stopped}" if run.stopped else "")
        if stds:
            note += f"; σ over rounds 1–{last.round}: {min(stds):.3g}–{max(stds):.3g}"
        objective = f"GSIL loop, loss {run.loss}" if pointwise else f"self-play loop, pairwise loss {run.loss}"
        fits.append(fit_row(run.label, objective, last.mean, last.std, note))
    fits.append(fit_row("reverse-KL optimum (reference)", "KL(model‖data), grid integral", rev_mean, rev_std,
                        "the mode-seeking target; not a learning algorithm"))

    fixed_point = None
    if pointwise:
        fixed_point = {}
        for b, g in gsil_settings(beta, gamma):
            at = {}
            for where, (m, s) in {"mle": (mle_mean, mle_std), "reverse_kl_optimum": (rev_mean, rev_std),
                                  "base": (settings.init_mean, settings.init_std)}.items():
                grad = round_gradient(samples, m, s, loss_name, b, g, settings.hermite_nodes)
                at[where] = {"d_mean": grad[0], "d_log_std": grad[1], "norm": math.hypot(*grad)}
            fixed_point[f"β={b:g} γ={g:g}"] = at

    return {
        "seed": seed,
        "loss": loss_name,
        "pointwise": pointwise,
        "beta": beta,
        "gamma": gamma,
        "settings": asdict(settings),
        "data": {"mixture": asdict(data), "n": settings.n, "sample_mean": sample_mean, "sample_std": sample_std},
        "fits": fits,
        "runs": [{**{k: v for k, v in asdict(run).items() if k != "rounds"},
                  "rounds": [asdict(r) for r in run.rounds]} for run in runs],
        "round_gradient": fixed_point,
    }
