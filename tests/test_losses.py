"""The loss library against hand-worked values and the properties docs/design.md#losses and the paper notes imply.

Notation as in gsil.losses: Δ = policy − reference (summed log-probs), f = beta·Δ + gamma, sp(x) = log(1 + e^x).
"""

from __future__ import annotations

import math

import pytest
import torch

from gsil.losses import EXP_BOUND, LOSSES, LossOutput, get_loss, loss_metrics, pair_metric_names, register

POINTWISE = ["logistic", "hinge", "brier", "exponential", "kliep", "lsif"]
PAIRWISE = ["spin", "dpo"]


def _inputs(delta_positive, delta_negative, reference_positive=-12.0, reference_negative=-18.0, dtype=torch.float32):
    """Policy/reference log-prob vectors whose log-ratios are the given Δ⁺ and Δ⁻."""
    delta_positive = torch.as_tensor(delta_positive, dtype=torch.float64).reshape(-1)
    delta_negative = torch.as_tensor(delta_negative, dtype=torch.float64).reshape(-1)
    ref_pos = torch.full_like(delta_positive, reference_positive)
    ref_neg = torch.full_like(delta_negative, reference_negative)
    return [t.to(dtype) for t in (delta_positive + ref_pos, delta_negative + ref_neg, ref_pos, ref_neg)]


def test_registry_holds_exactly_the_design_losses():
    assert list(LOSSES) == POINTWISE + PAIRWISE
    for name in LOSSES:
        assert get_loss(name) is LOSSES[name]


def test_unknown_loss_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as error:
        get_loss("bernoulli_scale_shift")
    message = str(error.value)
    assert "bernoulli_scale_shift" in message
    for name in LOSSES:
        assert name in message


def test_a_name_cannot_be_registered_twice():
    with pytest.raises(ValueError, match="already registered"):
        register("logistic", shifted=True)(lambda *args, **kwargs: None)
    assert LOSSES["logistic"].__name__ == "logistic_loss"


# Hand-worked per-example losses. Each entry: (beta, gamma, Δ⁺, Δ⁻) -> expected loss, one per registered loss.
#
# Point A: beta = 1, gamma = 0, Δ⁺ = Δ⁻ = 0, so f⁺ = f⁻ = 0 and σ(0) = ½.
#   logistic sp(0) + sp(0) = 2·log 2 = 1.3862944     hinge 1 + 1 = 2          brier ¼ + ¼ = 0.5
#   exponential e⁰ + e⁰ = 2                          kliep −0 + e⁰ = 1        lsif −e⁰ + ½e⁰ = −0.5
#   spin/dpo −log σ(0) = log 2 = 0.6931472
# Point B: beta = 0.5, gamma = 1, Δ⁺ = 2, Δ⁻ = −2, so f⁺ = 0.5·2 + 1 = 2, f⁻ = 0.5·(−2) + 1 = 0.
#   logistic sp(−2) + sp(0) = 0.1269280 + 0.6931472 = 0.8200752
#   hinge max(0, 1 − 2) + max(0, 1 + 0) = 1
#   brier σ(−2)² + σ(0)² = 0.1192029² + 0.25 = 0.2642093
#   exponential e^(−2) + e⁰ = 0.1353353 + 1 = 1.1353353
#   kliep −2 + e⁰ = −1
#   lsif −e² + ½e⁰ = −7.3890561 + 0.5 = −6.8890561
#   spin/dpo (gamma ignored) −log σ(0.5·(2 − (−2))) = sp(−2) = 0.1269280
# Point C: beta = 1, gamma = 0.5, Δ⁺ = −4, Δ⁻ = 3, so f⁺ = −3.5, f⁻ = 3.5 (both responses on the wrong side).
#   logistic sp(3.5) + sp(3.5) = 2·3.5297504 = 7.0595008
#   hinge max(0, 4.5) + max(0, 4.5) = 9
#   brier σ(3.5)² + σ(3.5)² = 2·0.9706878² = 1.8844695
#   exponential e^3.5 + e^3.5 = 2·33.1154520 = 66.2309039
#   kliep 3.5 + e^3.5 = 36.6154520
#   lsif −e^(−3.5) + ½e^7 = −0.0301974 + 548.3165792 = 548.2863818
#   spin/dpo −log σ(1·(−4 − 3)) = sp(7) = 7.0009115
POINTS = {
    "A": (1.0, 0.0, 0.0, 0.0),
    "B": (0.5, 1.0, 2.0, -2.0),
    "C": (1.0, 0.5, -4.0, 3.0),
}
HAND_VALUES = {
    "logistic": {"A": 1.3862944, "B": 0.8200752, "C": 7.0595008},
    "hinge": {"A": 2.0, "B": 1.0, "C": 9.0},
    "brier": {"A": 0.5, "B": 0.2642093, "C": 1.8844695},
    "exponential": {"A": 2.0, "B": 1.1353353, "C": 66.2309039},
    "kliep": {"A": 1.0, "B": -1.0, "C": 36.6154520},
    "lsif": {"A": -0.5, "B": -6.8890561, "C": 548.2863818},
    "spin": {"A": 0.6931472, "B": 0.1269280, "C": 7.0009115},
    "dpo": {"A": 0.6931472, "B": 0.1269280, "C": 7.0009115},
}


def test_every_registered_loss_has_hand_values():
    assert set(HAND_VALUES) == set(LOSSES), "add hand-worked values for a new loss"


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("point", sorted(POINTS))
def test_hand_worked_values(name, point):
    beta, gamma, delta_positive, delta_negative = POINTS[point]
    out = get_loss(name)(*_inputs(delta_positive, delta_negative), beta=beta, gamma=gamma)
    assert isinstance(out, LossOutput)
    expected = HAND_VALUES[name][point]
    assert out.losses.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert (out.positive_term + out.negative_term).item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert out.rewards_positive.item() == pytest.approx(delta_positive)
    assert out.rewards_negative.item() == pytest.approx(delta_negative)


def test_pointwise_terms_split_as_in_the_table():
    # Point B for logistic: ℓ₊ = sp(−2) = 0.1269280 on the demonstration, ℓ₋ = sp(0) = log 2 on the generated one.
    out = get_loss("logistic")(*_inputs(2.0, -2.0), beta=0.5, gamma=1.0)
    assert out.positive_term.item() == pytest.approx(0.1269280, abs=1e-6)
    assert out.negative_term.item() == pytest.approx(0.6931472, abs=1e-6)


@pytest.mark.parametrize("name", PAIRWISE)
def test_pairwise_losses_report_everything_as_the_positive_term(name):
    out = get_loss(name)(*_inputs([2.0, -1.0], [-2.0, 0.5]), beta=0.5)
    assert torch.equal(out.positive_term, out.losses)
    assert torch.equal(out.negative_term, torch.zeros(2))


def test_exponent_guard_continues_linearly_past_the_bound():
    # kliep with beta = 1, gamma = 0, Δ⁺ = 0, Δ⁻ = 60: f⁻ = 60 is 10 past the bound 50, so
    # ℓ₋ = e^50·(1 + 10) = 11·e^50 and dℓ₋/dΔ⁻ = e^50 (the slope at the bound).
    assert EXP_BOUND == 50.0
    pol_pos, pol_neg, ref_pos, ref_neg = _inputs(0.0, 60.0)
    pol_neg.requires_grad_(True)
    out = get_loss("kliep")(pol_pos, pol_neg, ref_pos, ref_neg, beta=1.0)
    out.losses.sum().backward()
    assert out.negative_term.item() == pytest.approx(11 * math.exp(50), rel=1e-5)
    assert pol_neg.grad.item() == pytest.approx(math.exp(50), rel=1e-5)


@pytest.mark.parametrize("name", list(LOSSES))
def test_gradients_push_real_up_and_generated_down(name):
    # Inside the hinge margin (|f| < 1) every loss has a non-zero gradient, so the sign is informative.
    generator = torch.Generator().manual_seed(0)
    delta_positive = torch.rand(16, generator=generator) - 0.5
    delta_negative = torch.rand(16, generator=generator) - 0.5
    pol_pos, pol_neg, ref_pos, ref_neg = _inputs(delta_positive, delta_negative)
    pol_pos.requires_grad_(True)
    pol_neg.requires_grad_(True)
    ref_pos.requires_grad_(True)
    ref_neg.requires_grad_(True)
    get_loss(name)(pol_pos, pol_neg, ref_pos, ref_neg, beta=0.5, gamma=0.1).losses.sum().backward()
    assert (pol_pos.grad < 0).all(), "the demonstration's log-prob must be pushed up"
    assert (pol_neg.grad > 0).all(), "the generated response's log-prob must be pushed down"
    # The reference enters as −reference: opposite signs.
    assert (ref_pos.grad > 0).all() and (ref_neg.grad < 0).all()


@pytest.mark.parametrize("name", POINTWISE)
def test_gamma_translates_pointwise_losses_by_gamma_over_beta(name):
    # ℓ(beta·Δ + gamma) = ℓ(beta·(Δ + gamma/beta)): the shift moves the optimum in Δ by −gamma/beta.
    beta, gamma = 0.5, 1.5
    delta_positive = torch.tensor([-3.0, -0.25, 0.0, 0.75, 2.0])
    delta_negative = torch.tensor([1.0, 0.5, -0.5, -2.0, 0.25])
    shifted = get_loss(name)(*_inputs(delta_positive, delta_negative), beta=beta, gamma=gamma)
    translated = get_loss(name)(
        *_inputs(delta_positive + gamma / beta, delta_negative + gamma / beta), beta=beta, gamma=0.0
    )
    unshifted = get_loss(name)(*_inputs(delta_positive, delta_negative), beta=beta, gamma=0.0)
    torch.testing.assert_close(shifted.losses, translated.losses, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(shifted.losses, unshifted.losses), "gamma must change a pointwise loss"


@pytest.mark.parametrize("name", PAIRWISE)
def test_gamma_leaves_pairwise_losses_unchanged(name):
    inputs = _inputs([-3.0, 0.0, 2.0], [1.0, 0.0, -5.0])
    plain = get_loss(name)(*inputs, beta=0.1, gamma=0.0)
    shifted = get_loss(name)(*inputs, beta=0.1, gamma=2.0)
    assert torch.equal(plain.losses, shifted.losses)


def test_spin_on_selfplay_pairs_equals_dpo_on_the_same_pairs():
    generator = torch.Generator().manual_seed(1)
    inputs = [-50 * torch.rand(32, generator=generator) for _ in range(4)]
    spin = get_loss("spin")(*inputs, beta=0.1)
    dpo = get_loss("dpo")(*inputs, beta=0.1)
    for field in ("losses", "positive_term", "negative_term", "rewards_positive", "rewards_negative"):
        assert torch.equal(getattr(spin, field), getattr(dpo, field))


@pytest.mark.parametrize("name", ["logistic", "brier", "exponential", "kliep", "lsif"])
def test_identical_pairs_are_minimised_at_minus_gamma_over_beta(name):
    # Same response as demonstration and generation: Δ⁺ = Δ⁻ = Δ, loss ℓ₊(f) + ℓ₋(f), whose minimum is at f = 0
    # for these losses, i.e. Δ = −gamma/beta = −40 for the demo's beta = 0.05, gamma = 2
    # (docs/design.md#identical-pairs). Minimise by brute force over a grid of Δ (one batch element per grid point).
    beta, gamma = 0.05, 2.0
    grid = torch.linspace(-100.0, 100.0, 20001, dtype=torch.float64)  # step 0.01
    out = get_loss(name)(*_inputs(grid, grid, dtype=torch.float64), beta=beta, gamma=gamma)
    best = grid[out.losses.argmin()].item()
    assert best == pytest.approx(-gamma / beta, abs=0.02)


def test_hinge_is_flat_for_identical_pairs_inside_the_margin():
    # max(0, 1 − f) + max(0, 1 + f) = 2 for |f| ≤ 1: no unique fixed point, unlike the other pointwise losses.
    grid = torch.tensor([-59.0, -40.0, -21.0])  # f = 0.05·Δ + 2 ∈ {−0.95, 0, 0.95}
    out = get_loss("hinge")(*_inputs(grid, grid), beta=0.05, gamma=2.0)
    torch.testing.assert_close(out.losses, torch.full((3,), 2.0))


def test_logistic_with_zero_shift_is_trl_bco_pair():
    generator = torch.Generator().manual_seed(2)
    delta_positive = 10 * torch.randn(64, generator=generator)
    delta_negative = 10 * torch.randn(64, generator=generator)
    beta = 0.3
    out = get_loss("logistic")(*_inputs(delta_positive, delta_negative), beta=beta, gamma=0.0)
    bco_pair = -torch.log(torch.sigmoid(beta * delta_positive)) - torch.log(torch.sigmoid(-beta * delta_negative))
    torch.testing.assert_close(out.losses, bco_pair, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_finite_values_and_gradients_for_extreme_log_ratios(name, dtype):
    extremes = torch.tensor([-1e4, -1e3, -60.0, -1.0, 0.0, 1.0, 60.0, 1e3, 1e4])
    delta_positive = extremes.repeat_interleave(len(extremes))
    delta_negative = extremes.repeat(len(extremes))
    for beta, gamma in [(0.01, 2.0), (1.0, 0.0), (1.0, -3.0)]:
        inputs = [t.detach().requires_grad_(True) for t in _inputs(delta_positive, delta_negative, dtype=dtype)]
        out = get_loss(name)(*inputs, beta=beta, gamma=gamma)
        out.losses.mean().backward()
        for field in ("losses", "positive_term", "negative_term", "rewards_positive", "rewards_negative"):
            value = getattr(out, field)
            assert value.dtype == torch.float32, f"{field} must be float32 whatever the input dtype"
            assert torch.isfinite(value).all(), f"{name} {field} not finite (beta={beta}, gamma={gamma})"
        for t in inputs:
            assert torch.isfinite(t.grad).all(), f"{name} gradient not finite (beta={beta}, gamma={gamma})"


def test_bf16_inputs_are_computed_in_float32():
    # Δ⁺ = 1, Δ⁻ = −1 (all bf16-exact), beta = 1: loss = 2·sp(−1) = 0.6265234. Computed in bf16 the softplus would
    # round to 0.3125 each (8-bit mantissa), a relative error of 2e-3.
    pol_pos, pol_neg, ref_pos, ref_neg = _inputs(1.0, -1.0, dtype=torch.bfloat16)
    out = get_loss("logistic")(pol_pos, pol_neg, ref_pos, ref_neg, beta=1.0)
    assert out.losses.dtype == torch.float32
    assert out.losses.item() == pytest.approx(0.6265234, rel=1e-6)


def test_bad_inputs_are_rejected():
    a, b, c, d = _inputs([0.0, 1.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="one shape"):
        get_loss("logistic")(a, b, c, d[:1], beta=0.1)
    with pytest.raises(ValueError, match="one shape"):
        get_loss("spin")(a[None], b[None], c[None], d[None], beta=0.1)
    with pytest.raises(ValueError, match="beta"):
        get_loss("kliep")(a, b, c, d, beta=0.0)
    with pytest.raises(ValueError, match="gamma"):
        get_loss("kliep")(a, b, c, d, beta=0.1, gamma=float("nan"))
    with pytest.raises(TypeError):
        get_loss("logistic")(a, b, c, d, 0.1)  # beta is keyword-only


def test_loss_metrics_on_a_hand_case():
    # logistic, beta = 1, gamma = 0.
    # example 1: policy (−1, −3), reference (−2, −2): Δ⁺ = 1, Δ⁻ = −1, ℓ₊ = sp(−1) = 0.3132617, ℓ₋ = sp(−1)
    # example 2: policy (−2, −1), reference (−2, −2): Δ⁺ = 0, Δ⁻ = 1,  ℓ₊ = sp(0) = 0.6931472, ℓ₋ = sp(1) = 1.3132617
    policy_positive = torch.tensor([-1.0, -2.0])
    policy_negative = torch.tensor([-3.0, -1.0])
    reference = torch.tensor([-2.0, -2.0])
    out = get_loss("logistic")(policy_positive, policy_negative, reference, reference, beta=1.0)
    metrics = loss_metrics(out, policy_positive, policy_negative, kind="selfplay")
    expected = {
        "loss": (0.3132617 * 2 + 0.6931472 + 1.3132617) / 2,  # 1.3164661
        "loss/real": (0.3132617 + 0.6931472) / 2,  # 0.5032044
        "loss/generated": (0.3132617 + 1.3132617) / 2,  # 0.8132617
        "rewards/real": 0.5,
        "rewards/generated": 0.0,
        "rewards/margin": 0.5,  # mean of (1 − (−1), 0 − 1) = (2, −1)
        "rewards/accuracy": 0.5,  # 1 > −1 yes, 0 > 1 no
        "logps/real": -1.5,
        "logps/generated": -2.0,
    }
    assert set(metrics) == set(expected)
    for key, value in expected.items():
        assert isinstance(metrics[key], float)
        assert metrics[key] == pytest.approx(value, abs=1e-6), key
    # a preference (DPO) run logs the same numbers under TRL's words, and no rewards/real
    preference = loss_metrics(out, policy_positive, policy_negative, kind="preference")
    assert preference == {key.replace("/real", "/chosen").replace("/generated", "/rejected"): value
                          for key, value in metrics.items()}
    assert "rewards/chosen" in preference and "rewards/rejected" in preference and "rewards/real" not in preference
    assert list(preference.values()) == list(metrics.values())  # same order, bit-identical values


def test_pair_metric_names_translate_positive_negative_per_pair_kind():
    assert pair_metric_names("selfplay") == {
        "loss/positive": "loss/real", "loss/negative": "loss/generated",
        "rewards/positive": "rewards/real", "rewards/negative": "rewards/generated",
        "logps/positive": "logps/real", "logps/negative": "logps/generated",
    }
    assert pair_metric_names("preference") == {
        "loss/positive": "loss/chosen", "loss/negative": "loss/rejected",
        "rewards/positive": "rewards/chosen", "rewards/negative": "rewards/rejected",
        "logps/positive": "logps/chosen", "logps/negative": "logps/rejected",
    }
    with pytest.raises(ValueError, match="not a pair kind"):
        pair_metric_names("reference")
    with pytest.raises(TypeError):
        loss_metrics(None, None, None)  # the pair kind is required: no silent default to one side's words
