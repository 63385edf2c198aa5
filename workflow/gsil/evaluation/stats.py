"""Small statistics shared by the runners."""

from __future__ import annotations

import math
from typing import Sequence


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and standard error of the mean (sample standard deviation / sqrt(n)); stderr None when n < 2.

    The same estimator lm-eval reports for mean-aggregated metrics, so judge scores and harness metrics carry
    comparable error bars.
    """
    if not values:
        raise ValueError("mean of no values")
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)
