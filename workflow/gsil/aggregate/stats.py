"""Statistics for comparing models item by item: pure functions on arrays of per-item scores, no I/O.

Conventions: `a` and `b` are the scores of two models on the same items, aligned (a[i] and b[i] belong to item i);
differences are a - b; intervals are two-sided at `confidence` (0.95 = 95 %); every random draw comes from
`numpy.random.default_rng(seed)`, so a result depends only on its inputs and the seed.

Paired intervals: for correct/incorrect items, Tango's score interval for the difference of paired proportions;
for other per-item scores, the percentile bootstrap over items. The bootstrap of a 0/1 paired difference depends
on the discordant items only, so it collapses to [0, 0] when the two models agree on every item and is too narrow
when few items differ, whatever n is; the score interval keeps a width of about z²/n there (Fagerland, Lydersen
and Laake 2014 recommend it for paired proportions). Pooled over seeds, the same score interval on counts deflated
by the design effect of the item clusters (Rao and Scott 1992), or the bootstrap of per-item means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from statistics import NormalDist
from typing import Sequence

import numpy as np

# Bootstrap draws are made in chunks of at most this many multinomial cells (rows x distinct values).
_CHUNK_CELLS = 2_000_000


@dataclass(frozen=True)
class Paired:
    """One paired comparison of two models over n shared items (scores in the caller's unit)."""
    n: int
    mean_a: float
    mean_b: float
    difference: float   # mean_a - mean_b = mean over items of a[i] - b[i]
    low: float          # interval of the difference (`method`)
    high: float
    a_better: int       # items where a[i] > b[i] (McNemar's b)
    b_better: int       # items where a[i] < b[i] (McNemar's c)
    p_value: float      # exact McNemar / sign test, two-sided
    method: str = "bootstrap"  # "tango" (0/1 items) or "bootstrap"


def _vector(values: Sequence[float] | np.ndarray, what: str = "values") -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{what}: expected a non-empty 1-D sequence, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what}: contains NaN or infinity")
    return array


def _aligned(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x, y = _vector(a, "a"), _vector(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired scores must be aligned: {x.size} vs {y.size} items")
    return x, y


def bootstrap_means(values: Sequence[float], samples: int = 10_000, seed: int = 0) -> np.ndarray:
    """Means of `samples` bootstrap resamples of `values` (n items drawn with replacement, n = len(values)).

    Vectorised, in chunks of bounded memory. When the n values take few distinct values (k <= n/4: 0/1 scores,
    their differences, ratings), by counts: how often each item is drawn in one resample is Multinomial(n, 1/n
    each), so summed over the items sharing one value the counts are Multinomial(n, share of that value); drawing
    those counts for the k values gives exactly the distribution of drawing items one by one, at a cost of
    samples x k. Otherwise by drawing item indices (samples x n).
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    x = _vector(values)
    distinct, counts = np.unique(x, return_counts=True)
    rng = np.random.default_rng(seed)
    by_counts = distinct.size * 4 <= x.size
    rows = max(1, _CHUNK_CELLS // (distinct.size if by_counts else x.size))
    chunks = []
    for start in range(0, samples, rows):
        size = min(rows, samples - start)
        if by_counts:
            chunks.append(rng.multinomial(x.size, counts / x.size, size=size) @ distinct / x.size)
        else:
            chunks.append(x[rng.integers(0, x.size, size=(size, x.size))].mean(axis=1))
    return np.concatenate(chunks)


def percentile_interval(draws: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """The central `confidence` interval of `draws`: its (1-c)/2 and (1+c)/2 quantiles."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(_vector(draws, "draws"), [tail, 1.0 - tail])
    return float(low), float(high)


def bootstrap_mean_ci(values: Sequence[float], confidence: float = 0.95, samples: int = 10_000,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (items resampled with replacement)."""
    return percentile_interval(bootstrap_means(values, samples, seed), confidence)


def paired_bootstrap_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95, samples: int = 10_000,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(a - b), resampling items (pairs) with replacement."""
    x, y = _aligned(a, b)
    return bootstrap_mean_ci(x - y, confidence, samples, seed)


def sign_counts(a: Sequence[float], b: Sequence[float]) -> tuple[int, int]:
    """(items where a > b, items where a < b): McNemar's discordant counts b and c for 0/1 scores."""
    x, y = _aligned(a, b)
    return int(np.sum(x > y)), int(np.sum(x < y))


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts b and c.

    Under no difference each discordant pair goes either way with probability 1/2, so with X ~ Bin(b + c, 1/2)
    p = min(1, 2 * P(X <= min(b, c))); p = 1 when there is no discordant pair. Computed in exact integer
    arithmetic (no overflow or underflow for large counts). For scores that are not 0/1 the same test on the
    signs of the per-item differences is the sign test.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    total = b + c
    if total == 0:
        return 1.0
    term, tail = 1, 0  # term = comb(total, k), summed for k = 0 .. min(b, c)
    for k in range(min(b, c) + 1):
        tail += term
        term = term * (total - k) // (k + 1)
    return min(1.0, float(Fraction(2 * tail, 2 ** total)))


def _tango_statistic(delta: float, b: float, c: float, n: float) -> float:
    """Tango's score statistic for H0: p(a wins) - p(b wins) = delta, with the discordant counts b, c of n pairs.

    Under H0 the variance of (b - c) / n is (2 q + delta (1 - delta)) / n, q = p(b wins), and q is replaced by its
    maximum-likelihood value under H0: the positive root of 2n q² + B q + C = 0 below."""
    quad_b = -b - c + (2 * n - b + c) * delta
    quad_c = -c * delta * (1.0 - delta)
    q = (math.sqrt(max(quad_b * quad_b - 8.0 * n * quad_c, 0.0)) - quad_b) / (4.0 * n)
    numerator = b - c - n * delta
    variance = n * (2.0 * q + delta * (1.0 - delta))
    if variance <= 0.0:
        # Only at delta = (b - c) / n with b = c = 0, where the numerator is 0 too: the limit is 0.
        return 0.0 if numerator == 0 else math.copysign(math.inf, numerator)
    return numerator / math.sqrt(variance)


def _decreasing_root(f, low: float, high: float, iterations: int = 200) -> float:
    """x in [low, high] with f(x) = 0 for f decreasing, f(low) >= 0 >= f(high) (bisection to float precision)."""
    for _ in range(iterations):
        middle = (low + high) / 2.0
        if middle in (low, high):
            break
        if f(middle) > 0.0:
            low = middle
        else:
            high = middle
    return (low + high) / 2.0


def tango_interval(b: float, c: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Tango's (1998) asymptotic score interval of the difference of paired proportions (b - c) / n.

    b: pairs where the first model is right and the second wrong, c: the reverse, n: all pairs. The limits are
    the deltas at which the score statistic equals -/+ z; the statistic decreases in delta, so each limit is one
    bisection. With b = c = 0 the interval is -/+ z²/(n + z²); with c = 0 its upper end is the Wilson upper bound
    of b / n (the tests check both). Counts may be fractional (effective counts after a design effect)."""
    if n < 1 or b < 0 or c < 0 or b + c > n:
        raise ValueError(f"need 0 <= b, c and b + c <= n, n >= 1; got b={b}, c={c}, n={n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    estimate = (b - c) / n
    low = -1.0 if _tango_statistic(-1.0, b, c, n) <= z else _decreasing_root(
        lambda d: _tango_statistic(d, b, c, n) - z, -1.0, estimate)
    high = 1.0 if _tango_statistic(1.0, b, c, n) >= -z else _decreasing_root(
        lambda d: _tango_statistic(d, b, c, n) + z, estimate, 1.0)
    return low, high


def paired_comparison(a: Sequence[float], b: Sequence[float], confidence: float = 0.95, samples: int = 10_000,
                      seed: int = 0, unit: float = 1.0) -> Paired:
    """Mean of each, the mean difference with its interval, and the exact McNemar (sign test) p.

    The interval is Tango's score interval when every score is 0 or `unit` (a right answer is worth `unit`: 1
    for fractions, 100 for percentages), else the percentile bootstrap over items."""
    x, y = _aligned(a, b)
    better_a, better_b = sign_counts(x, y)
    if unit > 0 and is_binary(x / unit) and is_binary(y / unit):
        low, high = (unit * v for v in tango_interval(better_a, better_b, int(x.size), confidence))
        method = "tango"
    else:
        low, high = bootstrap_mean_ci(x - y, confidence, samples, seed)
        method = "bootstrap"
    return Paired(n=int(x.size), mean_a=float(x.mean()), mean_b=float(y.mean()), difference=float((x - y).mean()),
                  low=low, high=high, a_better=better_a, b_better=better_b, p_value=mcnemar_exact(better_a, better_b),
                  method=method)


def is_binary(values: Sequence[float]) -> bool:
    """True when every value is 0 or 1 (correct / incorrect items)."""
    x = _vector(values)
    return bool(np.all((x == 0.0) | (x == 1.0)))


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion successes / n (stays inside [0, 1], sensible at 0 % and 100 %)."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} / {n}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    share = successes / n
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def score_interval(values: Sequence[float], confidence: float = 0.95, samples: int = 10_000,
                   seed: int = 0) -> tuple[float, float, str]:
    """Interval of one model's mean score over items: Wilson for 0/1 items, else percentile bootstrap.

    Returns (low, high, method) with method "wilson" or "bootstrap"."""
    x = _vector(values)
    if is_binary(x):
        low, high = wilson_interval(int(x.sum()), int(x.size), confidence)
        return low, high, "wilson"
    low, high = bootstrap_mean_ci(x, confidence, samples, seed)
    return low, high, "bootstrap"


def normal_interval(value: float, stderr: float, confidence: float = 0.95) -> tuple[float, float]:
    """value -/+ z * stderr (for a reported standard error when the per-item scores are not available)."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    return value - z * stderr, value + z * stderr


def mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1 in the denominator) over seeds; sd is None for one value."""
    x = _vector(values)
    return float(x.mean()), (float(x.std(ddof=1)) if x.size > 1 else None)


@dataclass(frozen=True)
class Pooled:
    """A paired difference pooled over seeds on n shared items (scores in the caller's unit)."""
    n: int
    difference: float   # mean over items of the per-item mean over seeds of a_s[i] - b_s[i]
    low: float          # interval of the difference (`method`)
    high: float
    method: str         # "tango-clustered" (0/1 items) or "bootstrap"
    design_effect: float | None = None  # tango-clustered only: how many seeds' pairs count as one item's


def design_effect(differences: np.ndarray) -> float:
    """Design effect of the item clusters in a seeds x items array of per-pair differences.

    The variance of the overall mean when whole items are resampled (all seeds of an item move together)
    divided by its variance were every (seed, item) pair independent: S var(item means) / var(pairs), both with
    population variances. Clipped to [1, S]: 1 is S independent seeds, S is seeds that repeat each other's
    answers (no more information than one). With no variation at all the pooled data cannot tell, so S."""
    seeds = differences.shape[0]
    pair_variance = float(differences.var())
    if pair_variance == 0.0:
        return float(seeds)
    raw = seeds * float(differences.mean(axis=0).var()) / pair_variance
    return min(float(seeds), max(1.0, raw))


def pooled_paired_difference(a_by_seed: Sequence[Sequence[float]], b_by_seed: Sequence[Sequence[float]],
                             confidence: float = 0.95, samples: int = 10_000, seed: int = 0,
                             unit: float = 1.0) -> Pooled:
    """Difference over seeds: per item, the mean over seeds of a_s[i] - b_s[i], then its mean over items.

    Row s of each argument holds seed s's scores on the same items in the same order. Interval: when every score
    is 0 or `unit`, Tango's score interval on the discordant counts of all seeds divided by the design effect of
    the item clusters (Rao and Scott's adjustment for clustered binary data: the seeds of one item are not
    independent), which is `tango_interval` itself with one seed and never collapses when the models agree
    everywhere; otherwise the percentile bootstrap of the per-item means, resampling items."""
    if len(a_by_seed) == 0 or len(a_by_seed) != len(b_by_seed):
        raise ValueError(f"need the same non-zero number of seeds for a and b, got {len(a_by_seed)} and "
                         f"{len(b_by_seed)}")
    pairs = [_aligned(a, b) for a, b in zip(a_by_seed, b_by_seed)]
    if len({x.size for x, _ in pairs}) != 1:
        raise ValueError(f"every seed needs the same items, got sizes {[x.size for x, _ in pairs]}")
    differences = np.vstack([x - y for x, y in pairs])
    per_item = differences.mean(axis=0)
    n = int(per_item.size)
    binary = unit > 0 and all(is_binary(x / unit) and is_binary(y / unit) for x, y in pairs)
    if not binary:
        low, high = bootstrap_mean_ci(per_item, confidence, samples, seed)
        return Pooled(n, float(per_item.mean()), low, high, "bootstrap")
    effect = design_effect(differences / unit)
    wins, losses = float(np.sum(differences > 0)), float(np.sum(differences < 0))
    low, high = tango_interval(wins / effect, losses / effect, differences.size / effect, confidence)
    return Pooled(n, float(per_item.mean()), unit * low, unit * high, "tango-clustered", effect)
