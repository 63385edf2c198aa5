"""`gsil paper-figures`: Figure 10 follows the loss registry and has the hand-worked values; the Figure 1 toy's fits,
KL integrals and fixed-point diagnostic are right, deterministic, and show what GSIL's loop honestly does; the stage
writes its files. Runs in seconds (the toy with 6 rounds instead of 20)."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch

from gsil import cli
from gsil.losses import LOSSES, LossOutput, register, unregister
from gsil.paper_figures import draw
from gsil.paper_figures.loss_shapes import OTHER, PAIRWISE, POINTWISE, classify, loss_shapes
from gsil.paper_figures.report import OUTPUT_NAMES
from gsil.paper_figures.toy import DATA, Mixture, ToySettings, fit_mle, kl_divergences, round_gradient, run_toy

BETA, GAMMA = 0.1, 2.0
ROUNDS = 6
REPO = Path(__file__).resolve().parent.parent
RULE_FILE = REPO / "workflow" / "rules" / "paper_figures.smk"


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ------------------------------------------------------------------------------------------------ Figure 10

# (ℓ₊(f), ℓ₋(f)) of each pointwise loss, worked by hand from the formulas in gsil/losses.py's docstrings.
HAND = {
    "logistic": (lambda f: softplus(-f), lambda f: softplus(f)),
    "hinge": (lambda f: max(0.0, 1.0 - f), lambda f: max(0.0, 1.0 + f)),
    "brier": (lambda f: sigmoid(-f) ** 2, lambda f: sigmoid(f) ** 2),
    "exponential": (lambda f: math.exp(-f), lambda f: math.exp(f)),
    "kliep": (lambda f: -f, lambda f: math.exp(f)),
    "lsif": (lambda f: -math.exp(f), lambda f: 0.5 * math.exp(2.0 * f)),
}


@pytest.fixture(scope="module")
def shapes():
    return {shape.name: shape for shape in loss_shapes(BETA, GAMMA)}


def test_logistic_at_zero_log_ratio_is_log_two_on_both_sides(shapes):
    values = shapes["logistic"].values
    assert values["real γ=0"]["βΔ=0"] == pytest.approx(math.log(2.0), rel=1e-6)
    assert values["generated γ=0"]["βΔ=0"] == pytest.approx(math.log(2.0), rel=1e-6)
    # the shift moves the real side's penalty down and the generated side's up: log(1 + e^∓2)
    assert values["real γ=2"]["βΔ=0"] == pytest.approx(math.log1p(math.exp(-2.0)), rel=1e-6)
    assert values["generated γ=2"]["βΔ=0"] == pytest.approx(math.log1p(math.exp(2.0)), rel=1e-6)


@pytest.mark.parametrize("name", sorted(HAND))
def test_pointwise_curves_match_the_hand_formulas(shapes, name):
    shape = shapes[name]
    assert shape.kind == POINTWISE
    real, generated = HAND[name]
    for gamma in (0.0, GAMMA):
        for point in (-2.0, -1.0, 0.0, 1.0, 2.0):
            f = point + gamma
            assert shape.values[f"real γ={gamma:g}"][f"βΔ={point:g}"] == pytest.approx(real(f), rel=1e-5, abs=1e-6)
            assert shape.values[f"generated γ={gamma:g}"][f"βΔ={point:g}"] == pytest.approx(generated(f), rel=1e-5,
                                                                                            abs=1e-6)
    # the grid curves are the same function: at Δ = 0 (the grid's middle point) ℓ₊(γ), ℓ₋(γ)
    middle = len(shape.x) // 2
    assert shape.x[middle] == pytest.approx(0.0, abs=1e-9)
    assert shape.curves[f"real γ={GAMMA:g}"][middle] == pytest.approx(real(GAMMA), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", ["spin", "dpo"])
def test_pairwise_losses_are_drawn_against_the_margin_and_ignore_the_shift(shapes, name):
    shape = shapes[name]
    assert shape.kind == PAIRWISE
    assert shape.values["loss γ=0"]["βΔ=0"] == pytest.approx(math.log(2.0), rel=1e-6)
    assert shape.values["loss γ=0"]["βΔ=1"] == pytest.approx(softplus(-1.0), rel=1e-6)
    assert shape.curves["loss γ=0"] == pytest.approx(shape.curves[f"loss γ={GAMMA:g}"])
    assert "no effect" in shape.note


@pytest.fixture
def throwaway_losses():
    """Two losses registered for one test and removed afterwards (the registry is module state)."""
    names = []

    def add(name, fn):
        register(name, shifted=True)(fn)
        names.append(name)

    yield add
    for name in names:
        unregister(name)


def _output(positive, negative):
    return LossOutput(losses=positive + negative, positive_term=positive, negative_term=negative,
                      rewards_positive=positive.detach(), rewards_negative=negative.detach())


def test_the_figure_follows_the_registry(throwaway_losses, tmp_path):
    def squared(policy_positive, policy_negative, reference_positive, reference_negative, *, beta, gamma=0.0):
        f_pos = beta * (policy_positive - reference_positive).float() + gamma
        f_neg = beta * (policy_negative - reference_negative).float() + gamma
        return _output((f_pos - 1.0) ** 2, 3.0 * (f_neg + 1.0) ** 2)

    def coupled(policy_positive, policy_negative, reference_positive, reference_negative, *, beta, gamma=0.0):
        product = (policy_positive - reference_positive).float() * (policy_negative - reference_negative).float()
        return _output(product, torch.zeros_like(product))

    throwaway_losses("test_paper_figures_squared", squared)
    throwaway_losses("test_paper_figures_coupled", coupled)
    shapes = {shape.name: shape for shape in loss_shapes(BETA, GAMMA)}
    assert list(shapes) == list(LOSSES)
    square = shapes["test_paper_figures_squared"]
    assert square.kind == POINTWISE
    assert square.values["real γ=0"]["βΔ=0"] == pytest.approx(1.0)
    assert square.values["generated γ=2"]["βΔ=1"] == pytest.approx(3.0 * (1.0 + 2.0 + 1.0) ** 2)
    other = shapes["test_paper_figures_coupled"]
    assert other.kind == OTHER and not other.curves
    drawn = draw.figure10([shapes["logistic"], square, other], BETA, GAMMA, tmp_path / "figure10.png")
    assert drawn == 2
    assert (tmp_path / "figure10.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_classification_does_not_depend_on_the_scale():
    for beta in (0.01, 1.0, 5.0):
        kinds = {name: classify(fn, beta) for name, fn in LOSSES.items()}
        assert [n for n, k in kinds.items() if k == PAIRWISE] == ["spin", "dpo"]
        assert all(k == POINTWISE for n, k in kinds.items() if n not in ("spin", "dpo"))


# ------------------------------------------------------------------------------------------------ Figure 1 toy


def test_kl_integrals_match_closed_forms():
    one = Mixture(weights=(1.0,), means=(0.5,), stds=(1.5,))
    mean, std = -1.0, 0.7
    # KL(N(a, s²) || N(b, t²)) = log(t/s) + (s² + (a − b)²)/(2t²) − 1/2
    forward = math.log(std / 1.5) + (1.5**2 + 1.5**2) / (2 * std**2) - 0.5
    reverse = math.log(1.5 / std) + (std**2 + 1.5**2) / (2 * 1.5**2) - 0.5
    got = kl_divergences(one, mean, std)
    assert got[0] == pytest.approx(forward, rel=1e-6)
    assert got[1] == pytest.approx(reverse, rel=1e-6)
    # a Gaussian sitting on one well-separated component of weight w has KL(model || data) = −log w, less the
    # little the other component adds to the data density under it
    on_mode = kl_divergences(DATA, -3.0, 0.6)[1]
    assert on_mode == pytest.approx(-math.log(0.6), abs=1e-4) and on_mode < -math.log(0.6)


def test_mle_fit_is_the_sample_mean_and_standard_deviation():
    samples = DATA.sample(500, torch.Generator().manual_seed(3))
    mean, std = fit_mle(samples)
    assert mean == pytest.approx(float(samples.mean()), abs=1e-6)
    assert std == pytest.approx(float(samples.std(correction=0)), abs=1e-6)


@pytest.mark.parametrize("beta,gamma", [(1.0, 0.0), (BETA, GAMMA)])
def test_a_gsil_round_is_stationary_exactly_at_the_mle(beta, gamma):
    """The GSIL loop's fixed point: round t's gradient at θ = θt vanishes at the MLE (exact generated side), and
    not at the mode-seeking fit nor at the base model."""
    samples = DATA.sample(500, torch.Generator().manual_seed(4))
    mean, std = fit_mle(samples)
    assert math.hypot(*round_gradient(samples, mean, std, "logistic", beta, gamma)) < 1e-5
    assert math.hypot(*round_gradient(samples, -3.0, 0.6, "logistic", beta, gamma)) > 0.1
    assert math.hypot(*round_gradient(samples, 0.0, 1.0, "logistic", beta, gamma)) > 0.05


def test_toy_is_deterministic():
    settings = ToySettings(n=100, rounds=2, steps_per_round=3)
    first = run_toy(BETA, GAMMA, 7, settings=settings)
    second = run_toy(BETA, GAMMA, 7, settings=settings)
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


# ------------------------------------------------------------------------------------------------ the stage


@pytest.fixture(scope="module")
def stage_output(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper_figures")
    code = cli.main(["paper-figures", "--output-dir", str(out), "--beta", str(BETA), "--gamma", str(GAMMA),
                     "--seed", "0", "--rounds", str(ROUNDS)])
    assert code == 0
    return out


def test_stage_writes_every_output(stage_output):
    for name in OUTPUT_NAMES.values():
        assert (stage_output / name).is_file(), name
    for name in ("figure10.png", "figure1.png"):
        assert (stage_output / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(stage_output / "figure1_kl.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["Fit"] for r in rows] == ["base model (start of every fit)", "SFT (maximum likelihood)",
                                        "GSIL-logistic β=1 γ=0", "GSIL-logistic β=0.1 γ=2",
                                        "reverse-KL optimum (reference)"]
    page = (stage_output / "figure1_kl.html").read_text(encoding="utf-8")
    assert "<th>KL(model‖data)</th>" in page and "<td>SFT (maximum likelihood)</td>" in page
    markdown = (stage_output / "figure1_kl.md").read_text(encoding="utf-8")
    assert "| Fit | Objective | μ | σ | KL(data‖model) | KL(model‖data) | Note |" in markdown
    assert "Fixed-point check" in markdown
    numbers = json.loads((stage_output / "paper_figures.json").read_text(encoding="utf-8"))
    assert set(numbers["figure10"]) == set(LOSSES)
    assert numbers["figure1"]["settings"]["rounds"] == ROUNDS
    info = json.loads((stage_output / "run_info.json").read_text(encoding="utf-8"))
    assert info["settings"]["beta"] == BETA and info["settings"]["gamma"] == GAMMA


def test_toy_outcome_sft_covers_and_gsil_tracks_the_mle(stage_output):
    """What the honest experiment shows: GSIL's loop (β = 1, γ = 0) settles on the maximum-likelihood fit, i.e. it is
    mode-covering like SFT; neither comes near the mode-seeking reverse-KL optimum."""
    toy = json.loads((stage_output / "paper_figures.json").read_text(encoding="utf-8"))["figure1"]
    fits = {row["fit"]: row for row in toy["fits"]}
    mle, reference = fits["SFT (maximum likelihood)"], fits["reverse-KL optimum (reference)"]
    assert mle["mean"] == pytest.approx(toy["data"]["sample_mean"], abs=1e-5)
    assert mle["std"] == pytest.approx(toy["data"]["sample_std"], abs=1e-5)
    # the reverse-KL optimum sits on the heavier mode
    assert reference["mean"] == pytest.approx(-3.0, abs=0.01) and reference["std"] == pytest.approx(0.6, abs=0.01)
    learned = [row for name, row in fits.items() if name.startswith(("SFT", "GSIL"))]
    assert min(learned, key=lambda row: row["kl_data_model"]) is mle
    assert min(row["kl_model_data"] for row in fits.values()) == reference["kl_model_data"]

    run = next(r for r in toy["runs"] if r["beta"] == 1.0 and r["gamma"] == 0.0)
    assert run["stopped"] is None and len(run["rounds"]) == ROUNDS + 1
    for record in run["rounds"][1:]:
        assert record["kl_data_model"] < mle["kl_data_model"] + 0.1
        assert record["kl_model_data"] > 3.0 * reference["kl_model_data"]
    final = run["rounds"][-1]
    assert final["mean"] == pytest.approx(mle["mean"], abs=0.5)
    assert 0.8 < final["std"] / mle["std"] < 1.25
    for at in toy["round_gradient"].values():
        assert at["mle"]["norm"] < 1e-5 < at["reverse_kl_optimum"]["norm"]


@pytest.mark.parametrize("argv,message", [
    (["--toy-loss", "nope"], "not a registered loss"),
    (["--beta", "0"], "--beta"),
    (["--rounds", "0"], "--rounds"),
])
def test_stage_rejects_bad_settings(tmp_path, capsys, argv, message):
    assert cli.main(["paper-figures", "--output-dir", str(tmp_path), *argv]) == 1
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------ the rule


def test_rule_declares_every_output_and_its_captions_exist_and_render():
    text = RULE_FILE.read_text(encoding="utf-8")
    for key, name in OUTPUT_NAMES.items():
        assert re.search(rf'{key}=(?:report\(\s*)?"<results>/figures/paper/{re.escape(name)}"', text), key
    captions = re.findall(r'caption="\.\./(report/paper_figures/[\w.]+\.rst)"', text)
    assert captions
    publish = pytest.importorskip("docutils.core").publish_parts
    for caption in set(captions):
        source = (REPO / "workflow" / caption).read_text(encoding="utf-8")
        publish(source, writer="html", settings_overrides={"halt_level": 2, "report_level": 2})
        assert "How it was" in source, caption
    for flag in ("--beta {params.beta}", "--gamma {params.gamma}", "--seed {params.seed}", "> {log} 2>&1"):
        assert flag in text
