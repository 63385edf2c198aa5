"""The alignment losses: GSIL's pointwise density-ratio losses and the pairwise SPIN and DPO baselines.

Pure functions of per-sequence *summed* response log-probs (docs/design.md#losses); no model, no I/O. Every loss has
the signature

    fn(policy_positive, policy_negative, reference_positive, reference_negative, *, beta, gamma=0.0) -> LossOutput

where "positive" is the demonstration (GSIL, SPIN) or the chosen response (DPO) and "negative" the self-generated
or rejected response (the side the loss pushes up / down). Inside the package the two sides are always positive and
negative; the record files and the logged metrics use their pair kind's words, `real`/`generated` (the paper's) for
self-play and `chosen`/`rejected` (TRL's) for preferences, from `gsil.records.PAIR_FIELDS` (`pair_metric_names`).
With

    Δ⁺ = policy_positive − reference_positive,   Δ⁻ = policy_negative − reference_negative,
    f⁺ = beta·Δ⁺ + gamma,                        f⁻ = beta·Δ⁻ + gamma,

a GSIL loss is ℓ₊(f⁺) + ℓ₋(f⁻) per example (the trainer averages over the batch). SPIN and DPO are
−log σ(beta·(Δ⁺ − Δ⁻)); they accept `gamma` so that every loss has one signature, and ignore it, because a shift
added to both log-ratios cancels in their difference.

Naming: this module follows the GSIL paper, where β scales the log-ratio. The official code
(https://github.com/tengxiao1/GSIL, commit bf269e0, gsil/alignment/trainer.py, `gsil_loss`) calls the scale `alpha`
and the additive shift `beta`: official `alpha` = our `beta`, official `beta` = our `gamma`. Its script uses
alpha 0.01 and beta 2, i.e. beta=0.01, gamma=2 here.

Numerics: everything is computed in float32 whatever the input dtype (bf16 log-probs lose the integer part of a
summed log-prob of a few hundred tokens otherwise). The exponential terms go through `_guarded_exp`, which follows
e^x up to x = EXP_BOUND (50) and its tangent line beyond, so a finite input never gives inf or NaN; past the bound
the loss grows linearly and its gradient stays at e^50 instead of growing further (it saturates, it does not
vanish, so the push on the offending response keeps its direction).

The loss is looked up by name once (`get_loss`); the trainer never branches on the name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "EXP_BOUND",
    "LOSSES",
    "LOSS_INFO",
    "LossFn",
    "LossInfo",
    "LossOutput",
    "get_loss",
    "loss_metrics",
    "pair_metric_names",
    "register",
    "unregister",
]

# e^50 ≈ 5.2e21: far inside float32's range (3.4e38) even after the tangent-line continuation is multiplied by
# |x| ≤ 1e4-ish log-ratios, and far beyond any loss value a healthy run sees (f = beta·Δ is O(1) in practice).
EXP_BOUND = 50.0


def _torch():
    """torch, imported on first use: the workflow reads the registry's facts (`LOSS_INFO`) when it plans a run,
    and importing torch there would cost every `snakemake` call seconds."""
    import torch

    return torch


@dataclass(frozen=True)
class LossOutput:
    """Per-example results of one loss evaluation; every field has shape [B] and dtype float32.

    losses: the total loss of each example (the trainer takes the mean).
    positive_term: ℓ₊ on the demonstration / chosen response; for SPIN and DPO the whole loss.
    negative_term: ℓ₋ on the self-generated / rejected response; zeros for SPIN and DPO.
    rewards_positive: Δ⁺ = policy − reference log-prob of the positive response, detached and unscaled (logged as
        `rewards/real` for self-play, as the official code does, and `rewards/chosen` for preferences).
    rewards_negative: Δ⁻, likewise (`rewards/generated`, `rewards/rejected`).
    """

    losses: Tensor
    positive_term: Tensor
    negative_term: Tensor
    rewards_positive: Tensor
    rewards_negative: Tensor


LossFn = Callable[..., LossOutput]


@dataclass(frozen=True)
class LossInfo:
    """What the rest of the suite knows about a loss, declared once where the loss is registered.

    shifted: the loss takes the shift gamma (the GSIL family); SPIN and DPO do not, and the planner drops gamma.
    data: "selfplay" trains on (demonstration, own generation) pairs, regenerated each round; "preference" on
        fixed (chosen, rejected) pairs, one round.
    form: "pointwise" (a term per response, ℓ₊(f⁺) + ℓ₋(f⁻)) or "pairwise" (a function of the margin Δ⁺ − Δ⁻).
    label: display name in tables and figures.
    """

    name: str
    shifted: bool
    data: Literal["selfplay", "preference"]
    form: Literal["pointwise", "pairwise"]
    label: str


LOSSES: dict[str, LossFn] = {}
LOSS_INFO: dict[str, LossInfo] = {}


def register(name: str, *, shifted: bool, data: Literal["selfplay", "preference"] = "selfplay",
             form: Literal["pointwise", "pairwise"] = "pointwise", label: str | None = None
             ) -> Callable[[LossFn], LossFn]:
    """Add a loss to `LOSSES` under `name` with its facts in `LOSS_INFO` (a decorator); a name can be registered
    once. The planner, the config check, the tables and the tests read the facts from here."""
    if data not in ("selfplay", "preference") or form not in ("pointwise", "pairwise"):
        raise ValueError(f"loss {name!r}: data must be selfplay|preference and form pointwise|pairwise, "
                         f"got {data!r}, {form!r}")

    def decorate(fn: LossFn) -> LossFn:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is already registered (by {LOSSES[name].__name__})")
        LOSSES[name] = fn
        LOSS_INFO[name] = LossInfo(name=name, shifted=shifted, data=data, form=form, label=label or name)
        return fn

    return decorate


def unregister(name: str) -> None:
    """Remove a registered loss (tests register throwaway losses)."""
    LOSSES.pop(name, None)
    LOSS_INFO.pop(name, None)


def get_loss(name: str) -> LossFn:
    """The registered loss called `name`; an unknown name raises ValueError listing the valid ones."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(LOSSES)}") from None


# The per-step metrics logged once per side of the pair, "<quantity>/<side>" (docs/design.md#losses).
PAIR_METRIC_QUANTITIES = ("loss", "rewards", "logps")


def pair_metric_names(kind: str) -> dict[str, str]:
    """The logged name of each per-side metric of a `kind` pair run, keyed by its internal name:
    {"loss/positive": "loss/real", ..., "logps/negative": "logps/generated"} for selfplay, with chosen/rejected
    for preference. The one place metric names get the pair kind's words (`gsil.records.PAIR_FIELDS`): the
    paper's Figure 2 plots `rewards/real` and `rewards/generated`, TRL's DPO logs `rewards/chosen` and
    `rewards/rejected`. `rewards/margin` and `rewards/accuracy` are Δ⁺ − Δ⁻ whatever the kind."""
    from gsil.records import PAIR_FIELDS

    if kind not in PAIR_FIELDS:
        raise ValueError(f"{kind!r} is not a pair kind; expected one of {', '.join(PAIR_FIELDS)}")
    words = dict(zip(("positive", "negative"), PAIR_FIELDS[kind]))
    return {f"{quantity}/{side}": f"{quantity}/{word}"
            for quantity in PAIR_METRIC_QUANTITIES for side, word in words.items()}


def loss_metrics(out: LossOutput, policy_positive: Tensor, policy_negative: Tensor, *, kind: str
                 ) -> dict[str, float]:
    """Batch means of the quantities logged per step (docs/design.md#losses), as Python floats, under the names
    of a `kind` pair run (`pair_metric_names`).

    `rewards/*` are the unscaled log-ratios Δ⁺ and Δ⁻ (the paper's Figure 2 plots them), `rewards/accuracy` the
    fraction of examples with Δ⁺ > Δ⁻, `logps/*` the policy's summed log-probs.
    """
    names = pair_metric_names(kind)
    rewards_positive = out.rewards_positive.detach().float()
    rewards_negative = out.rewards_negative.detach().float()
    values = {
        "loss": out.losses.detach().float().mean(),
        "loss/positive": out.positive_term.detach().float().mean(),
        "loss/negative": out.negative_term.detach().float().mean(),
        "rewards/positive": rewards_positive.mean(),
        "rewards/negative": rewards_negative.mean(),
        "rewards/margin": (rewards_positive - rewards_negative).mean(),
        "rewards/accuracy": (rewards_positive > rewards_negative).float().mean(),
        "logps/positive": policy_positive.detach().float().mean(),
        "logps/negative": policy_negative.detach().float().mean(),
    }
    return {names.get(key, key): value.item() for key, value in values.items()}


# ----------------------------------------------------------------------------------------------------------------
# shared pieces


def _guarded_exp(x: Tensor) -> Tensor:
    """e^x for x ≤ EXP_BOUND, continued by the tangent line e^B·(1 + x − B) beyond, so it never overflows.

    The exp branch sees x clamped to the bound, so the branch torch.where discards never holds inf (whose
    zero-masked gradient would be NaN).
    """
    clamped = x.clamp(max=EXP_BOUND)
    tangent = math.exp(EXP_BOUND) * (1.0 + (x - EXP_BOUND))
    return _torch().where(x <= EXP_BOUND, _torch().exp(clamped), tangent)


def _log_ratios(
    policy_positive: Tensor, policy_negative: Tensor, reference_positive: Tensor, reference_negative: Tensor
) -> tuple[Tensor, Tensor]:
    """Δ⁺ and Δ⁻ in float32, after checking that the four inputs are per-example vectors of one shape."""
    inputs = {
        "policy_positive": policy_positive,
        "policy_negative": policy_negative,
        "reference_positive": reference_positive,
        "reference_negative": reference_negative,
    }
    shapes = {name: tuple(t.shape) for name, t in inputs.items()}
    if len(set(shapes.values())) != 1 or policy_positive.dim() != 1:
        raise ValueError(f"loss inputs must be 1-D per-example log-probs of one shape [B], got {shapes}")
    delta_positive = policy_positive.float() - reference_positive.float()
    delta_negative = policy_negative.float() - reference_negative.float()
    return delta_positive, delta_negative


def _check_scale(beta: float, gamma: float) -> None:
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta (the scale of the log-ratio) must be a finite positive number, got {beta!r}")
    if not math.isfinite(gamma):
        raise ValueError(f"gamma (the shift of the log-ratio) must be finite, got {gamma!r}")


def _pointwise(
    positive_loss: Callable[[Tensor], Tensor],
    negative_loss: Callable[[Tensor], Tensor],
    policy_positive: Tensor,
    policy_negative: Tensor,
    reference_positive: Tensor,
    reference_negative: Tensor,
    beta: float,
    gamma: float,
) -> LossOutput:
    """ℓ₊(beta·Δ⁺ + gamma) + ℓ₋(beta·Δ⁻ + gamma): the GSIL objective for one choice of (ℓ₊, ℓ₋)."""
    _check_scale(beta, gamma)
    delta_positive, delta_negative = _log_ratios(
        policy_positive, policy_negative, reference_positive, reference_negative
    )
    positive_term = positive_loss(beta * delta_positive + gamma)
    negative_term = negative_loss(beta * delta_negative + gamma)
    return LossOutput(
        losses=positive_term + negative_term,
        positive_term=positive_term,
        negative_term=negative_term,
        rewards_positive=delta_positive.detach(),
        rewards_negative=delta_negative.detach(),
    )


def _pairwise_logistic(
    policy_positive: Tensor,
    policy_negative: Tensor,
    reference_positive: Tensor,
    reference_negative: Tensor,
    beta: float,
) -> LossOutput:
    """−log σ(beta·(Δ⁺ − Δ⁻)) = softplus(−beta·(Δ⁺ − Δ⁻)), finite for any finite margin."""
    _check_scale(beta, 0.0)
    delta_positive, delta_negative = _log_ratios(
        policy_positive, policy_negative, reference_positive, reference_negative
    )
    losses = _torch().nn.functional.softplus(-beta * (delta_positive - delta_negative))
    return LossOutput(
        losses=losses,
        positive_term=losses,
        negative_term=_torch().zeros_like(losses),
        rewards_positive=delta_positive.detach(),
        rewards_negative=delta_negative.detach(),
    )


# ----------------------------------------------------------------------------------------------------------------
# GSIL: pointwise losses, one term per response (official code: `gsil_loss`, trainer.py lines ~450-483)


@register("logistic", shifted=True, label="GSIL (logistic)")
def logistic_loss(
    policy_positive: Tensor,
    policy_negative: Tensor,
    reference_positive: Tensor,
    reference_negative: Tensor,
    *,
    beta: float,
    gamma: float = 0.0,
) -> LossOutput:
    """GSIL with the logistic (Bernoulli) loss: ℓ₊(f) = log(1 + e^(−f)), ℓ₋(f) = log(1 + e^(f)).

    loss = −log σ(beta·Δ⁺ + gamma) − log σ(−(beta·Δ⁻ + gamma)); at the optimum f estimates the log density
    ratio log(π_data / π_ref). With gamma = 0 this is TRL's `bco_pair` form −log σ(βΔ⁺) − log σ(−βΔ⁻).

    Source: GSIL paper (Xiao et al., EMNLP 2024), the loss family ℓ₁(f) + ℓ₋₁(f) of its Figure 10; official code
    GSIL@bf269e0 gsil/alignment/trainer.py `gsil_loss`, loss type `Bernoulli` (`bernoulli_scale_shift` in the
    shipped .pyc, the one its script runs), with official `alpha` = our beta (scale), official `beta` = our gamma
    (shift). Computed with softplus, which is exact and finite for every finite f.
    """
    return _pointwise(
        lambda f: _torch().nn.functional.softplus(-f),
        lambda f: _torch().nn.functional.softplus(f),
        policy_positive,
        policy_negative,
        reference_positive,
        reference_negative,
        beta,
        gamma,
    )


@register("hinge", shifted=True, label="GSIL (hinge)")
def hinge_loss(
    policy_positive: Tensor,
    policy_negative: Tensor,
    reference_positive: Tensor,
    reference_negative: Tensor,
    *,
    beta: float,
    gamma: float = 0.0,
) -> LossOutput:
    """GSIL with the hinge loss: ℓ₊(f) = max(0, 1 − f), ℓ₋(f) = max(0, 1 + f), f = beta·Δ + gamma.

    A margin classifier: its optimum is sign(log r), not the ratio itself, and the gradient is zero once a
    response clears the margin.

    Source: official code GSIL@bf269e0 gsil/alignment/trainer.py `gsil_loss`, loss type `Hinge`
    (`hinge_scale_shift` in the .pyc); official `alpha` = our beta, official `beta` = our gamma. The official
    comment "# average logps" is stale: summed log-probs are passed there too, as here.
    """
    return _pointwise(
        lambda f: _torch().nn.functional.relu(1.0 - f),
        lambda f: _torch().nn.functional.relu(1.0 + f),
        policy_positive,
        policy_negative,
        reference_positive,
        reference_negative,
        beta,
        gamma,
    )


@register("brier", shifted=True, label="GSIL (Brier)")
def brier_loss(
    policy_positive: Tensor,
    policy_negative: Tensor,
    reference_positive: Tensor,
    reference_negative: Tensor,
    *,
    beta: float,
    gamma: float = 0.0,
) -> LossOutput:
    """GSIL with the Brier (squared) loss on σ(f): ℓ₊(f) = (1 − σ(f))², ℓ₋(f) = σ(f)², f = beta·Δ + gamma.

    Computed as σ(−f)² for ℓ₊ (equal to (1 − σ(f))², without the cancellation of 1 − σ(f) for large f); bounded
    in [0, 1] and finite for every finite f.

    Source: official code GSIL@bf269e0 gsil/alignment/trainer.py `gsil_loss`, loss type `Brier`
    (`Brier_scale_shift` in the .pyc), there `F.mse_loss(σ(f_real), 1)` + `F.mse_loss(σ(f_gen), 0)`, which are
    batch means already; per example as here, the batch mean is the same. Official `alpha` = our beta, official
    `beta` = our gamma.
    """
    return _pointwise(
        lambda f: _torch().sigmoid(-f).square(),
        lambda f: _torch().sigmoid(f).square(),
        policy_positive,
        policy_negative,
        reference_positive,
        reference_negative,
        beta,
        gamma,
    )


@register("exponential", shifted=True, label="GSIL (exponential)")
def exponential_loss(
    policy_positive: Tensor,
    policy_negative: Tensor,
    reference_positive: Tensor,
    reference_negative: Tensor,
    *,
    beta: float,
    gamma: float = 0.0,
) -> LossOutput:
    """GSIL with the exponential (boosting) loss: ℓ₊(f) = e^(−f), ℓ₋(f) = e^(f), f = beta·Δ + gamma.

    Its optimum is f* = ½·log r. NOT in the official code (GSIL@bf269e0 has Bernoulli, Brier, Hinge, KLIEP, LSIF
    and spin only); docs/design.md#losses lists it, and the paper's own formula could not be read, so this is the
    standard ±1-label exponential loss. The exponent is guarded at EXP_BOUND = 50 (module docstring): beyond it the
    value continues linearly and the gradient saturates at e^50·beta.
    """
    return _pointwise(
        lambda f: _guarded_exp(-f),
        _guarded_exp,
        policy_positive,
        policy_negative,
        reference_positive,
        reference_negative,
        beta,
        gamma,
    )


@register("kliep", shifted=True, label="GSIL (KLIEP)")
def kliep_loss(
    policy_positive: Tensor,
    policy_negative: Tensor,
    reference_positive: Tensor,
    reference_negative: Tensor,
    *,
    beta: float,
    gamma: float = 0.0,
) -> LossOutput:
    """GSIL with the KLIEP loss (KL importance estimation): ℓ₊(f) = −f, ℓ₋(f) = e^(f), f = beta·Δ + gamma.

    At the optimum e^f estimates the density ratio r. ℓ₊ is unbounded below: the loss can be negative.

    Source: official code GSIL@bf269e0 gsil/alignment/trainer.py `gsil_loss`, loss type `KLIEP` (`KL-IEP` in the
    .pyc), with official `alpha` = our beta, official `beta` = our gamma. The exponent is guarded at EXP_BOUND = 50
    (module docstring): beyond it ℓ₋ continues linearly and its gradient saturates at e^50·beta.
    """
    return _pointwise(
        lambda f: -f,
        _guarded_exp,
        policy_positive,
        policy_negative,
        reference_positive,
        reference_negative,
        beta,
        gamma,
    )


@register("lsif", shifted=True, label="GSIL (LSIF)")
def lsif_loss(
    policy_positive: Tensor,
    policy_negative: Tensor,
    reference_positive: Tensor,
    reference_negative: Tensor,
    *,
    beta: float,
    gamma: float = 0.0,
) -> LossOutput:
    """GSIL with the LSIF loss (least-squares importance fitting): ℓ₊(f) = −e^(f), ℓ₋(f) = ½·e^(2f).

    f = beta·Δ + gamma; at the optimum e^f estimates the density ratio r. ℓ₊ is unbounded below.

    Source: official code GSIL@bf269e0 gsil/alignment/trainer.py `gsil_loss`, loss type `LSIF`, there
    `−exp(f_real)` and `0.5·exp(f_gen)²`; official `alpha` = our beta, official `beta` = our gamma. Both
    exponents (f and 2f) are guarded at EXP_BOUND = 50 (module docstring): beyond it the terms continue linearly
    and their gradients saturate.
    """
    return _pointwise(
        lambda f: -_guarded_exp(f),
        lambda f: 0.5 * _guarded_exp(2.0 * f),
        policy_positive,
        policy_negative,
        reference_positive,
        reference_negative,
        beta,
        gamma,
    )


# ----------------------------------------------------------------------------------------------------------------
# pairwise baselines: a shift gamma added to both log-ratios cancels, so both accept it and ignore it


@register("spin", shifted=False, form="pairwise", label="SPIN")
def spin_loss(
    policy_positive: Tensor,
    policy_negative: Tensor,
    reference_positive: Tensor,
    reference_negative: Tensor,
    *,
    beta: float,
    gamma: float = 0.0,
) -> LossOutput:
    """SPIN: −log σ(beta·(Δ⁺ − Δ⁻)) on (demonstration, self-generated) pairs, π_ref the previous iterate.

    Source: SPIN paper (Chen et al., 2024, arXiv 2401.01335); official code SPIN@a12ba80 (github.com/uclaml/SPIN)
    spin/alignment/trainer.py `spin_loss`, loss_type "sigmoid", default beta 0.1 (configs/config.yaml), summed
    log-probs. There `beta` is the scale, as here. The GSIL code's own `spin` branch (GSIL@bf269e0 trainer.py)
    uses its *shift* parameter `beta` as SPIN's coefficient (2 in its script); here SPIN always takes our
    `beta`. `gamma` is accepted and ignored (it cancels in Δ⁺ − Δ⁻). The whole loss is reported as the
    positive term; the negative term is zero.
    """
    del gamma  # cancels in the pairwise difference
    return _pairwise_logistic(policy_positive, policy_negative, reference_positive, reference_negative, beta)


@register("dpo", shifted=False, data="preference", form="pairwise", label="DPO")
def dpo_loss(
    policy_positive: Tensor,
    policy_negative: Tensor,
    reference_positive: Tensor,
    reference_negative: Tensor,
    *,
    beta: float,
    gamma: float = 0.0,
) -> LossOutput:
    """DPO: −log σ(beta·(Δ_w − Δ_l)) on (chosen, rejected) preference pairs, π_ref the SFT model.

    Δ_w = log πθ(y_w|x) − log π_ref(y_w|x) (summed log-probs), likewise Δ_l. Source: Rafailov et al. 2023,
    arXiv 2305.18290, eq. 7; the same formula as SPIN with a fixed reference and preference data (the zephyr
    recipe's beta is 0.01). `gamma` is accepted and ignored (it cancels in Δ_w − Δ_l). The whole loss is reported
    as the positive term; the negative term is zero.
    """
    del gamma  # cancels in the pairwise difference
    return _pairwise_logistic(policy_positive, policy_negative, reference_positive, reference_negative, beta)
