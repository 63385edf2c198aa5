"""gsil.aggregate.stats against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gsil.aggregate import stats


def test_mcnemar_exact_hand_worked():
    # b=5, c=1: X ~ Bin(6, 1/2), P(X <= 1) = (C(6,0) + C(6,1)) / 2^6 = 7/64, p = 2 * 7/64
    assert stats.mcnemar_exact(5, 1) == pytest.approx(2 * (1 + 6) / 64) == pytest.approx(0.21875)
    assert stats.mcnemar_exact(1, 5) == stats.mcnemar_exact(5, 1)  # two-sided: symmetric
    # b=10, c=0: P(X <= 0) = 1/1024, p = 2/1024
    assert stats.mcnemar_exact(10, 0) == pytest.approx(2 / 1024)
    # no discordant pair: no evidence either way
    assert stats.mcnemar_exact(0, 0) == 1.0
    # b=c: P(X <= b) > 1/2, capped at 1
    assert stats.mcnemar_exact(3, 3) == 1.0
    # large counts stay finite and exact-ish (no overflow): b=c+1 with many pairs is far from significant
    assert 0.9 < stats.mcnemar_exact(5001, 5000) <= 1.0
    with pytest.raises(ValueError):
        stats.mcnemar_exact(-1, 2)


def test_sign_counts_are_mcnemar_discordant_pairs():
    a = [1, 1, 1, 0, 0, 1]
    b = [0, 0, 1, 1, 0, 1]
    assert stats.sign_counts(a, b) == (2, 1)  # items 0, 1 only a correct; item 3 only b correct


def test_bootstrap_of_a_constant_difference_is_that_constant():
    a = np.full(50, 0.75)
    b = np.full(50, 0.25)
    low, high = stats.paired_bootstrap_ci(a, b, samples=500, seed=3)
    assert low == pytest.approx(0.5) and high == pytest.approx(0.5)
    # the same when only the difference is constant, not the scores
    a = np.arange(20.0) + 2.0
    low, high = stats.paired_bootstrap_ci(a, np.arange(20.0), samples=500)
    assert (low, high) == (pytest.approx(2.0), pytest.approx(2.0))


def _known_difference(n: int) -> tuple[np.ndarray, np.ndarray]:
    """a correct on 3/4 of the items, b on 1/2 (nested): mean difference exactly 0.25 at every n divisible by 4."""
    a = (np.arange(n) % 4 != 0).astype(float)   # 1 except every 4th item
    b = (np.arange(n) % 2 == 0).astype(float)   # 1 on even items
    return a, b


def test_bootstrap_ci_contains_the_known_difference_and_shrinks_with_n():
    widths = []
    for n in (40, 400, 4000):
        a, b = _known_difference(n)
        assert (a - b).mean() == pytest.approx(0.25)
        low, high = stats.paired_bootstrap_ci(a, b, samples=4000, seed=0)
        assert low < 0.25 < high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    # width ~ 2 * 1.96 * sd(d) / sqrt(n); d takes -1, 0, 1 with shares 1/4, 1/4, 1/2 -> sd = sqrt(11/16)
    assert widths[2] == pytest.approx(2 * 1.96 * math.sqrt(11 / 16) / math.sqrt(4000), rel=0.1)


def test_bootstrap_is_deterministic_under_a_seed():
    a, b = _known_difference(200)
    first = stats.paired_bootstrap_ci(a, b, samples=1000, seed=7)
    assert stats.paired_bootstrap_ci(a, b, samples=1000, seed=7) == first
    assert stats.paired_bootstrap_ci(a, b, samples=1000, seed=8) != first
    draws = stats.bootstrap_means(a - b, samples=1000, seed=7)
    assert draws.shape == (1000,)
    np.testing.assert_array_equal(draws, stats.bootstrap_means(a - b, samples=1000, seed=7))


@pytest.mark.parametrize("values", [np.linspace(0.0, 1.0, 101),                # many distinct: by item indices
                                    np.repeat([0.0, 0.25, 0.5, 1.0], 25)])  # few distinct: by counts
def test_bootstrap_in_small_chunks_has_the_bootstrap_distribution(monkeypatch, values):
    """Mean and spread of the draws are those of the bootstrap: mean(values) and sd(values) / sqrt(n)."""
    monkeypatch.setattr(stats, "_CHUNK_CELLS", 7 * values.size)
    draws = stats.bootstrap_means(values, samples=3000, seed=1)
    assert draws.shape == (3000,)
    assert draws.mean() == pytest.approx(values.mean(), abs=0.01)
    assert draws.std() == pytest.approx(values.std() / math.sqrt(values.size), rel=0.1)


def test_paired_comparison_numbers():
    a = [1, 1, 1, 1, 1, 1, 0, 1]
    b = [0, 0, 0, 0, 0, 1, 1, 1]
    result = stats.paired_comparison(a, b, samples=2000, seed=0)
    assert result.n == 8
    assert result.mean_a == pytest.approx(7 / 8) and result.mean_b == pytest.approx(3 / 8)
    assert result.difference == pytest.approx(0.5)
    assert (result.a_better, result.b_better) == (5, 1)
    assert result.p_value == pytest.approx(0.21875)
    assert result.method == "tango" and (result.low, result.high) == stats.tango_interval(5, 1, 8)
    assert result.low <= 0.5 <= result.high
    with pytest.raises(ValueError, match="aligned"):
        stats.paired_comparison([1, 0], [1])


def test_tango_interval_without_discordant_items_is_z2_over_n_plus_z2():
    # b = c = 0: for delta > 0 the restricted MLE of p(b wins) is 0, so T = -n delta / sqrt(n delta (1 - delta));
    # T = -z gives delta = z^2 / (n + z^2): 3.841459 / 11.841459 = 0.324408 for n = 8. The bootstrap gives [0, 0].
    assert stats.tango_interval(0, 0, 8) == (pytest.approx(-0.324408, abs=1e-6), pytest.approx(0.324408, abs=1e-6))
    # n = 400: 3.841459 / 403.841459 = 0.009512 (about one point either way at the demo's test size)
    assert stats.tango_interval(0, 0, 400)[1] == pytest.approx(0.009512, abs=1e-6)


def test_tango_interval_with_one_sided_discordance_ends_at_wilsons_bound():
    # c = 0: above (b - c) / n the restricted MLE of p(b wins) is 0 and T = -z is Wilson's equation for b / n, so
    # the upper end is Wilson's upper bound of 2 / 10: centre 0.283260, half-width 0.226578 -> 0.509838.
    low, high = stats.tango_interval(2, 0, 10)
    assert high == pytest.approx(0.509838, abs=1e-6) == pytest.approx(stats.wilson_interval(2, 10)[1])
    assert low < 0.0 < 0.2 < high  # 2 wins of 10 is not significant (McNemar p = 0.5)
    # swapping the models mirrors the interval
    assert stats.tango_interval(0, 2, 10) == (pytest.approx(-high), pytest.approx(-low))
    # every pair discordant one way: the interval reaches the bound
    assert stats.tango_interval(10, 0, 10)[1] == 1.0 and stats.tango_interval(0, 10, 10)[0] == -1.0


def test_tango_interval_is_close_to_wald_with_many_discordant_items():
    # b = 40, c = 20 of 160: Wald 0.125 -/+ 1.95996 * sqrt((60/160 - 0.125^2) / 160) = [0.0321, 0.2179]
    low, high = stats.tango_interval(40, 20, 160)
    assert (low, high) == (pytest.approx(0.0321, abs=2e-3), pytest.approx(0.2179, abs=2e-3))
    with pytest.raises(ValueError, match="b \\+ c <= n"):
        stats.tango_interval(5, 6, 10)


def test_paired_comparison_uses_the_score_interval_for_right_wrong_items():
    # Both models agree on all 8 items: the difference is 0 and the interval still has width (in percent here).
    same = [100, 0, 100, 100, 0, 0, 100, 0]
    result = stats.paired_comparison(same, same, samples=500, unit=100)
    assert result.method == "tango" and result.difference == 0.0
    assert (result.low, result.high) == (pytest.approx(-32.4408, abs=1e-3), pytest.approx(32.4408, abs=1e-3))
    # scores other than 0 and `unit` are bootstrapped
    assert stats.paired_comparison([0.5, 1, 0, 1], [0, 1, 0, 1], samples=500).method == "bootstrap"
    assert stats.paired_comparison([1, 0, 1, 1], [0, 1, 0, 1], samples=500, unit=100).method == "bootstrap"


def test_wilson_interval_hand_worked():
    # 8 of 10 at 95 %: z = 1.95996; centre = (0.8 + z^2/20) / (1 + z^2/10), half = z/(1+z^2/10) *
    # sqrt(0.8*0.2/10 + z^2/400)
    z = 1.959963984540054
    centre = (0.8 + z * z / 20) / (1 + z * z / 10)
    half = z / (1 + z * z / 10) * math.sqrt(0.016 + z * z / 400)
    low, high = stats.wilson_interval(8, 10)
    assert (low, high) == (pytest.approx(centre - half), pytest.approx(centre + half))
    assert (low, high) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    assert stats.wilson_interval(0, 10)[0] == pytest.approx(0.0, abs=1e-12)
    assert stats.wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_score_interval_picks_wilson_for_binary_items_else_bootstrap():
    low, high, method = stats.score_interval([1, 1, 1, 1, 1, 1, 1, 1, 0, 0])
    assert method == "wilson" and (low, high) == stats.wilson_interval(8, 10)
    low, high, method = stats.score_interval([0.5, 1.0, 0.0, 0.5], samples=500)
    assert method == "bootstrap" and 0.0 <= low <= 0.5 <= high <= 1.0
    assert stats.normal_interval(50.0, 1.0) == (pytest.approx(48.04, abs=0.01), pytest.approx(51.96, abs=0.01))


def test_mean_sd_over_seeds():
    mean, sd = stats.mean_sd([2.0, 4.0, 6.0])
    assert mean == pytest.approx(4.0) and sd == pytest.approx(2.0)  # sample sd: sqrt((4 + 0 + 4) / 2)
    assert stats.mean_sd([3.0]) == (3.0, None)


def test_pooled_paired_difference_averages_seeds_per_item():
    # seed 0: differences 1, 0, 1, 0 ; seed 1: differences 0, 0, 1, 1 -> per item 0.5, 0, 1, 0.5 -> mean 0.5
    a = [[1, 1, 1, 0], [1, 0, 1, 1]]
    b = [[0, 1, 0, 0], [1, 0, 0, 0]]
    pooled = stats.pooled_paired_difference(a, b, samples=2000, seed=0)
    assert (pooled.n, pooled.difference, pooled.method) == (4, pytest.approx(0.5), "tango-clustered")
    assert 0.0 <= pooled.low <= 0.5 <= pooled.high <= 1.0
    # scores that are not 0/1 keep the bootstrap of the per-item means; a constant per-item difference in every
    # seed gives a zero-width interval at that constant
    pooled = stats.pooled_paired_difference([[2, 3], [5, 6]], [[1, 2], [4, 5]], samples=100)
    assert pooled.method == "bootstrap" and pooled.design_effect is None
    assert (pooled.difference, pooled.low, pooled.high) == (pytest.approx(1.0),) * 3
    with pytest.raises(ValueError, match="same items"):
        stats.pooled_paired_difference([[1, 0], [1]], [[0, 0], [0]])


def test_design_effect_between_independent_and_repeated_seeds():
    # pairs (seed x item): [1, 0, 1, 0] and [1, 0, 0, 1]; item means 1, 0, .5, .5 (population variance 0.125),
    # pairs' variance 0.25 -> 2 * 0.125 / 0.25 = 1: the seeds carry independent information
    assert stats.design_effect(np.array([[1, 0, 1, 0], [1, 0, 0, 1]], dtype=float)) == pytest.approx(1.0)
    # identical seeds: item means vary as much as the pairs -> S
    assert stats.design_effect(np.array([[1, 0, -1, 0]] * 3, dtype=float)) == pytest.approx(3.0)
    # seeds that cancel per item (item means all 0) would give 0: clipped to 1
    assert stats.design_effect(np.array([[1, -1, 0, 0], [-1, 1, 0, 0]], dtype=float)) == 1.0
    # no variation at all: the data cannot tell, so the conservative S
    assert stats.design_effect(np.zeros((2, 5))) == 2.0


def test_pooled_binary_interval_is_tango_on_deflated_counts():
    z2 = 1.959963984540054 ** 2
    # two seeds that agree with each other and whose models tie on all 400 items: no wider and no narrower than
    # one seed, -/+ z^2 / (n + z^2) in points, where the bootstrap of per-item means gave [0, 0]
    tie = stats.pooled_paired_difference([[100] * 400] * 2, [[100] * 400] * 2, unit=100)
    assert (tie.low, tie.high) == (pytest.approx(-100 * z2 / (400 + z2)), pytest.approx(100 * z2 / (400 + z2)))
    assert tie.design_effect == 2.0
    # identical seeds give exactly the one-seed interval (deff = S: the copies add no information)
    a, b = [1, 1, 0, 1, 0, 0, 1, 1, 0, 1], [0, 1, 0, 0, 0, 1, 1, 1, 0, 0]
    one = stats.paired_comparison(a, b)
    three = stats.pooled_paired_difference([a] * 3, [b] * 3)
    assert (three.low, three.high) == (pytest.approx(one.low), pytest.approx(one.high))
    # independent seeds (deff = 1): Tango on the summed counts, b = 4, c = 0 of 8 pairs, whose upper end is
    # Wilson's upper bound of 4 / 8: (0.5 + z²/16 + z sqrt(0.25/8 + z²/256)) / (1 + z²/8) = 0.784784
    independent = stats.pooled_paired_difference([[1, 0, 1, 0], [1, 0, 0, 1]], [[0, 0, 0, 0], [0, 0, 0, 0]])
    assert independent.design_effect == pytest.approx(1.0)
    assert (independent.low, independent.high) == pytest.approx(stats.tango_interval(4, 0, 8))
    assert independent.high == pytest.approx(0.784784, abs=1e-6)
    assert independent.high == pytest.approx(stats.wilson_interval(4, 8)[1])
