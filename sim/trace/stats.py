"""Bounded accumulators of arc cycles: exact count, sum and maximum; percentiles from a
log-linear histogram (exact below 2,048 cycles, within 1/1,024 above), so that summarising
a capture of any size needs memory for its groups only, not for its arcs."""

from __future__ import annotations

import math
from collections.abc import Hashable

import numpy as np

EXACT_BELOW = 2048
SUB_BUCKETS = 1024  # per power of two above EXACT_BELOW
_EXACT_BITS = 11  # log2(EXACT_BELOW)


def bucket_of(values: np.ndarray) -> np.ndarray:
    """Histogram bucket of each (non-negative) cycle count."""
    v = values.astype(np.uint64)
    small = v < EXACT_BELOW
    big = np.where(small, np.uint64(EXACT_BELOW), v)
    e = np.floor(np.log2(big.astype(np.float64))).astype(np.int64)
    # float rounding near powers of two: make 2**e <= v < 2**(e + 1) hold exactly
    e -= (np.left_shift(np.uint64(1), e.astype(np.uint64)) > big).astype(np.int64)
    e += (np.left_shift(np.uint64(1), (e + 1).astype(np.uint64)) <= big).astype(np.int64)
    sub = (big >> (e - 10).astype(np.uint64)) & np.uint64(SUB_BUCKETS - 1)
    idx = EXACT_BELOW + (e - _EXACT_BITS) * SUB_BUCKETS + sub.astype(np.int64)
    return np.where(small, v.astype(np.int64), idx)


def bucket_floor(bucket: int) -> int:
    """The smallest cycle count in a bucket."""
    if bucket < EXACT_BELOW:
        return bucket
    e, sub = divmod(bucket - EXACT_BELOW, SUB_BUCKETS)
    e += _EXACT_BITS
    return (SUB_BUCKETS + sub) << (e - 10)


class CycleStats:
    """xenalyze's ``cycle_summary``: ``count`` counts every arc, the mean is taken over
    the arcs that lasted at least one cycle, as an integer (``cycles / count``)."""

    __slots__ = ("count", "hist", "max", "nonzero", "total")

    def __init__(self) -> None:
        self.count = 0
        self.nonzero = 0
        self.total = 0
        self.max = 0
        self.hist: dict[int, int] = {}

    def add(self, cycles: np.ndarray) -> None:
        if not len(cycles):
            return
        self.count += len(cycles)
        nz = cycles[cycles > 0]
        if not len(nz):
            return
        self.nonzero += len(nz)
        self.total += int(nz.sum(dtype=np.uint64))
        self.max = max(self.max, int(nz.max()))
        buckets, counts = np.unique(bucket_of(nz), return_counts=True)
        hist = self.hist
        for b, c in zip(buckets.tolist(), counts.tolist(), strict=True):
            hist[b] = hist.get(b, 0) + c

    @property
    def mean_cycles(self) -> int:
        return self.total // self.nonzero if self.nonzero else 0

    def percentile(self, q: float) -> int:
        """Nearest-rank percentile of the nonzero arcs (its bucket's lowest value)."""
        if not self.nonzero:
            return 0
        rank = max(1, math.ceil(q / 100 * self.nonzero))
        seen = 0
        for b in sorted(self.hist):
            seen += self.hist[b]
            if seen >= rank:
                return bucket_floor(b)
        return self.max


class GroupedStats:
    """One :class:`CycleStats` per group key, fed with whole arrays at a time."""

    def __init__(self) -> None:
        self.groups: dict[Hashable, CycleStats] = {}

    def add(self, keys: list[np.ndarray], cycles: np.ndarray) -> None:
        if not len(cycles):
            return
        stacked = np.stack([k.astype(np.int64) for k in keys], axis=1)
        uniq, inverse = np.unique(stacked, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(uniq) + 1))
        for g, row in enumerate(uniq.tolist()):
            key = tuple(row)
            stats = self.groups.get(key)
            if stats is None:
                stats = self.groups[key] = CycleStats()
            stats.add(cycles[order[bounds[g] : bounds[g + 1]]])

    def items(self) -> list[tuple[Hashable, CycleStats]]:
        return sorted(self.groups.items(), key=lambda kv: kv[0])  # type: ignore[arg-type]
