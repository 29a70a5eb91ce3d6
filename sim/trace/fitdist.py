"""Fit a distribution of durations: parametric by maximum likelihood, or empirical.

The criterion, stated in every ``fit.md``:

1. Values that are all the same (coefficient of variation below :data:`CONSTANT_CV`) are
   a ``constant``.
2. Otherwise exponential, lognormal and gamma are fitted by maximum likelihood (SciPy,
   location fixed at 0; lognormal and gamma only when every value is positive), and the
   one with the lowest AIC (2k - 2 ln L) is the best parametric candidate.
3. It is used if a one-sample Kolmogorov-Smirnov test of the values against it does not
   reject at :data:`ALPHA` (p >= 0.01); else the values themselves are, as an
   ``empirical`` distribution (a CSV beside the scenario, resampled with replacement).
   With the parameters estimated from the same values the standard KS p-value is too
   large (Lilliefors), so the test leans towards the parametric family, by a little.

Large samples are thinned to :data:`MAX_VALUES` evenly spaced values (a deterministic
subsample) before fitting and for the CSV.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

ALPHA = 0.01
CONSTANT_CV = 1e-3
MAX_VALUES = 20_000
FAMILIES = ("exponential", "lognormal", "gamma")


@dataclass
class Candidate:
    family: str
    params: dict[str, float]
    aic: float
    ks_d: float
    ks_p: float


@dataclass
class FittedDist:
    """The chosen distribution of one quantity, with the evidence for the choice."""

    quantity: str
    n: int
    mean: float
    chosen: str  # a family, "constant" or "empirical"
    dist: dict[str, Any]  # the scenario's distribution (``{dist: ...}``)
    candidates: list[Candidate] = field(default_factory=list)
    values: np.ndarray | None = None  # for an empirical choice: what goes in the CSV

    def describe(self) -> str:
        """The chosen distribution in a few words, for the report."""
        d = self.dist
        if self.chosen == "constant":
            return f"constant {d['value_ns']:.0f} ns"
        if self.chosen == "exponential":
            return f"exponential, mean {d['mean_ns']:.0f} ns"
        if self.chosen == "lognormal":
            return f"lognormal, mean {d['mean_ns']:.0f} ns, sigma {d['sigma']:.3f}"
        if self.chosen == "gamma":
            return f"gamma, mean {d['mean_ns']:.0f} ns, shape {d['shape']:.3f}"
        n = len(self.values) if self.values is not None else 0
        return f"empirical ({d['file']}, {n} values)"


def thin(values: np.ndarray, limit: int = MAX_VALUES) -> np.ndarray:
    """At most ``limit`` evenly spaced values, in their order (deterministic)."""
    if len(values) <= limit:
        return np.asarray(values, dtype=np.float64)
    idx = np.linspace(0, len(values) - 1, limit).round().astype(np.int64)
    return np.asarray(values, dtype=np.float64)[idx]


def _candidate(family: str, x: np.ndarray) -> Candidate | None:
    if family == "exponential":
        mean = float(x.mean())
        if mean <= 0:
            return None
        frozen = stats.expon(scale=mean)
        params, k = {"mean_ns": mean}, 1
    elif family == "lognormal":
        logs = np.log(x)
        mu, sigma = float(logs.mean()), float(logs.std())
        if sigma <= 0:
            return None
        frozen = stats.lognorm(s=sigma, scale=math.exp(mu))
        params, k = {"mean_ns": math.exp(mu + sigma * sigma / 2), "sigma": sigma}, 2
    else:
        shape, _, scale = stats.gamma.fit(x, floc=0)
        frozen = stats.gamma(shape, scale=scale)
        params, k = {"mean_ns": float(shape * scale), "shape": float(shape)}, 2
    loglik = float(np.sum(frozen.logpdf(x)))
    if not math.isfinite(loglik):
        return None
    ks = stats.kstest(x, frozen.cdf)
    return Candidate(family, params, 2 * k - 2 * loglik, float(ks.statistic), float(ks.pvalue))


def fit_distribution(quantity: str, values: np.ndarray, csv_name: str) -> FittedDist:
    """The distribution of ``values`` (ns) by the criterion above; ``csv_name`` is the
    file an empirical choice will be written to (relative to the scenario)."""
    full = np.asarray(values, dtype=np.float64)
    if not len(full):
        raise ValueError(f"{quantity}: no values to fit")
    x = thin(full)
    mean = float(full.mean())
    if mean <= 0 or float(x.std()) <= CONSTANT_CV * mean:
        return FittedDist(quantity, len(full), mean, "constant", _constant(mean))
    positive = bool((x > 0).all())
    candidates = [
        c
        for fam in FAMILIES
        if fam == "exponential" or positive
        for c in [_candidate(fam, x)]
        if c is not None
    ]
    best = min(candidates, key=lambda c: c.aic) if candidates else None
    if best is not None and best.ks_p >= ALPHA:
        dist = {"dist": best.family, **{k: _round(k, v) for k, v in best.params.items()}}
        return FittedDist(quantity, len(full), mean, best.family, dist, candidates)
    dist = {"dist": "empirical", "file": csv_name, "column": "ns"}
    return FittedDist(quantity, len(full), mean, "empirical", dist, candidates, values=x)


def _round(key: str, value: float) -> float:
    """ns to 0.1 ns; shapes and sigmas to 5 significant digits (for the scenario file)."""
    return round(value, 1) if key.endswith("_ns") else float(f"{value:.5g}")


def _constant(value: float) -> dict[str, Any]:
    return {"dist": "constant", "value_ns": round(max(0.0, value), 1)}


def constant(quantity: str, value: float) -> FittedDist:
    """A fixed value that was not fitted (the report says why)."""
    return FittedDist(quantity, 0, value, "constant", _constant(value))


def empirical_csv(values: np.ndarray) -> str:
    """The CSV of an empirical distribution: a header ``ns`` and one value per line."""
    return "ns\n" + "".join(f"{v:.1f}\n" for v in values.tolist())
