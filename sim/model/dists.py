"""Distributions of durations in a scenario, and the reader of empirical CSV columns.

Each distribution is a strict schema (``{dist: exponential, mean_ns: ...}``); the model
turns them into samplers (:mod:`sim.model.streams`). An empirical distribution resamples
a CSV column of ns values, read once per file version.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from sim.inputs import InputError, StrictModel, bounded, echo, read_input_text, user_path
from sim.model.bounds import MAX_STEP_NS, NonNeg, Positive, Sigma

#: An empirical CSV is at most this large, and holds at most this many values: plenty to
#: resample a measured distribution, and read in about a second.
MAX_EMPIRICAL_BYTES = 32 << 20
MAX_EMPIRICAL_VALUES = 1_000_000


#: A gamma distribution's shape k.
Shape = bounded(float, 0, 1e6, "k = 1e6 is already a constant to 0.1%", above_low=True)


# -- distributions --------------------------------------------------------------------
class ConstantDist(StrictModel):
    dist: Literal["constant"]
    value_ns: NonNeg


class ExponentialDist(StrictModel):
    dist: Literal["exponential"]
    mean_ns: Positive


class UniformDist(StrictModel):
    dist: Literal["uniform"]
    low_ns: NonNeg
    high_ns: NonNeg

    @model_validator(mode="after")
    def _ordered(self) -> UniformDist:
        if self.low_ns > self.high_ns:
            raise ValueError(f"low_ns ({self.low_ns}) is above high_ns ({self.high_ns})")
        return self


class LognormalDist(StrictModel):
    """Parameterised by its mean (ns) and the standard deviation of its logarithm."""

    dist: Literal["lognormal"]
    mean_ns: Positive
    sigma: Sigma


class GammaDist(StrictModel):
    """Parameterised by its mean (ns) and its shape k (k = 1 is the exponential)."""

    dist: Literal["gamma"]
    mean_ns: Positive
    shape: Shape


class EmpiricalDist(StrictModel):
    """Resampled with replacement from a CSV column of ns values (path relative to the
    scenario file). ``column`` names a header column; without it the first column."""

    dist: Literal["empirical"]
    file: Annotated[str, Field(min_length=1, max_length=4096)]  # PATH_MAX
    column: Annotated[str, Field(max_length=256)] | None = None


AnyDist = ConstantDist | ExponentialDist | UniformDist | LognormalDist | GammaDist | EmpiricalDist
Dist = Annotated[AnyDist, Field(discriminator="dist")]


def const(ns: float) -> ConstantDist:
    return ConstantDist(dist="constant", value_ns=ns)


def expo(ns: float) -> ExponentialDist:
    return ExponentialDist(dist="exponential", mean_ns=ns)


def lognorm(ns: float, sigma: float) -> LognormalDist:
    return LognormalDist(dist="lognormal", mean_ns=ns, sigma=sigma)


# Validation reads each CSV, and the model needs its values again: read once per file
# version. The key includes size and mtime, so an edited CSV is read afresh in a
# long-lived process (a notebook) rather than served stale.
_EMPIRICAL_CACHE: dict[tuple[str, str | None, int, int], list[float]] = {}


def read_empirical(base: Path, dist: EmpiricalDist, file: str | Path, keypath: str) -> list[float]:
    """Values of an empirical distribution's CSV column; errors name the scenario key."""
    where = f"{keypath}.file"
    path = user_path(base, dist.file, file, where)
    try:
        st = path.stat()
    except OSError as exc:
        raise InputError(file, where, f"cannot read {echo(dist.file)}: {exc.strerror}") from None
    cache_key = (str(path), dist.column, st.st_size, st.st_mtime_ns)
    if cache_key in _EMPIRICAL_CACHE:
        return _EMPIRICAL_CACHE[cache_key]
    try:
        text = read_input_text(path, MAX_EMPIRICAL_BYTES)
        rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    except InputError as exc:
        raise InputError(file, where, f"{echo(dist.file)} {exc.problem}") from None
    except csv.Error as exc:  # a NUL byte, a field over the csv module's limit
        raise InputError(file, where, f"{echo(dist.file)} is not a CSV file: {exc}") from None
    if not rows:
        raise InputError(file, where, f"{echo(dist.file)} has no values")
    if len(rows) > MAX_EMPIRICAL_VALUES + 1:
        raise InputError(
            file, where, f"{echo(dist.file)} has over {MAX_EMPIRICAL_VALUES} rows; resample it"
        )
    col = 0
    header = rows[0]
    try:
        float(header[0])
        has_header = False
    except ValueError:
        has_header = True
    if dist.column is not None:
        if not has_header or dist.column not in header:
            raise InputError(
                file, f"{keypath}.column", f"{echo(dist.file)} has no column {echo(dist.column)}"
            )
        col = header.index(dist.column)
    values: list[float] = []
    for lineno, row in enumerate(rows[1:] if has_header else rows, start=2 if has_header else 1):
        try:
            v = float(row[col])
        except (ValueError, IndexError):
            raise InputError(file, where, f"{echo(dist.file)} row {lineno}: not a number") from None
        if not 0 <= v <= MAX_STEP_NS:  # also refuses nan
            raise InputError(
                file,
                where,
                f"{echo(dist.file)} row {lineno}: {v} is not a duration in [0, 6e10] ns",
            )
        values.append(v)
    if not values:
        raise InputError(file, where, f"{echo(dist.file)} has no values")
    _EMPIRICAL_CACHE[cache_key] = values
    return values
