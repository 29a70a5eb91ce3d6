"""Statistics over replications: the mean and its 95% confidence interval (Student t)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of its 95% confidence interval (Student t); nan if n < 2."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        return math.nan, math.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan
    quantile = float(stats.t.ppf(0.975, len(x) - 1))
    half = quantile * float(x.std(ddof=1)) / math.sqrt(len(x))
    return mean, half
