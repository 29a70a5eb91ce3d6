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
    """One :class:`CycleStats` per group key, fed with whole arrays at a time (vectorised:
    one pass per batch, however many groups)."""

    def __init__(self) -> None:
        self.groups: dict[Hashable, CycleStats] = {}

    def add(self, keys: list[np.ndarray], cycles: np.ndarray) -> None:
        if not len(cycles):
            return
        cycles = cycles.astype(np.int64)
        # Each key column to dense codes, the codes to one mixed-radix int64, one 1-D unique:
        # much faster than np.unique(axis=0) on stacked rows.
        combined = np.zeros(len(cycles), dtype=np.int64)
        values = []
        for col in keys:
            vals, code = np.unique(col, return_inverse=True)
            combined = combined * len(vals) + code.reshape(-1)
            values.append(vals.tolist())
        codes, inverse = np.unique(combined, return_inverse=True)
        inverse = inverse.reshape(-1)
        n = len(codes)
        uniq = []
        for c in codes.tolist():
            parts = []
            for vals in reversed(values):
                c, r = divmod(c, len(vals))
                parts.append(int(vals[r]))
            uniq.append(tuple(reversed(parts)))
        count = np.bincount(inverse, minlength=n)
        nz = cycles > 0
        g_nz, c_nz = inverse[nz], cycles[nz]
        nonzero = np.bincount(g_nz, minlength=n)
        total = np.zeros(n, dtype=np.int64)
        np.add.at(total, g_nz, c_nz)
        biggest = np.zeros(n, dtype=np.int64)
        np.maximum.at(biggest, g_nz, c_nz)
        stats = []
        for key, c, z, t, m in zip(
            uniq,
            count.tolist(),
            nonzero.tolist(),
            total.tolist(),
            biggest.tolist(),
            strict=True,
        ):
            st = self.groups.get(key)
            if st is None:
                st = self.groups[key] = CycleStats()
            st.count += c
            st.nonzero += z
            st.total += t
            st.max = max(st.max, m)
            stats.append(st)
        if len(c_nz):
            pairs, hits = np.unique(g_nz * (1 << 32) + bucket_of(c_nz), return_counts=True)
            for pair, h in zip(pairs.tolist(), hits.tolist(), strict=True):
                g, b = divmod(pair, 1 << 32)
                hist = stats[g].hist
                hist[b] = hist.get(b, 0) + h

    def items(self) -> list[tuple[Hashable, CycleStats]]:
        return sorted(self.groups.items(), key=lambda kv: kv[0])  # type: ignore[arg-type]


class FlatStats:
    """Count, sum and maximum per group for tables with very many groups (one per
    address): each batch is reduced with numpy and the partial sums are merged in place,
    so no Python code runs per group until the table is read."""

    def __init__(self) -> None:
        self._keys: np.ndarray | None = None  # (groups, columns) int64
        self._sums = np.zeros((0, 4), dtype=np.int64)  # count, nonzero, total, max
        self._reduced = 0  # rows at the last reduction: reduce again at twice that

    def add(self, keys: list[np.ndarray], cycles: np.ndarray) -> None:
        if not len(cycles):
            return
        cycles = cycles.astype(np.int64)
        cols = np.stack([k.astype(np.int64) for k in keys], axis=1)
        nz = cycles > 0
        part = np.stack(
            (np.ones(len(cycles), np.int64), nz.astype(np.int64), cycles * nz, cycles * nz),
            axis=1,
        )
        if self._keys is not None:
            cols = np.concatenate((self._keys, cols))
            part = np.concatenate((self._sums, part))
        if len(cols) > 2 * self._reduced:  # amortised: each row is re-sorted O(1) times
            cols, part = _reduce(cols, part)
            self._reduced = len(cols)
        self._keys, self._sums = cols, part

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys, [count, nonzero, total, max]) per group, sorted by key."""
        if self._keys is None:
            return np.zeros((0, 0), dtype=np.int64), np.zeros((0, 4), dtype=np.int64)
        self._keys, self._sums = _reduce(self._keys, self._sums)
        self._reduced = len(self._keys)
        return self._keys, self._sums

    @property
    def groups(self) -> dict[Hashable, CycleStats]:
        out: dict[Hashable, CycleStats] = {}
        if self._keys is None:
            return out
        self._keys, self._sums = _reduce(self._keys, self._sums)
        self._reduced = len(self._keys)
        for key, (count, nonzero, total, biggest) in zip(
            self._keys.tolist(), self._sums.tolist(), strict=True
        ):
            st = out[tuple(key)] = CycleStats()
            st.count, st.nonzero, st.total, st.max = count, nonzero, total, biggest
        return out

    def items(self) -> list[tuple[Hashable, CycleStats]]:
        return sorted(self.groups.items(), key=lambda kv: kv[0])  # type: ignore[arg-type]


def _reduce(cols: np.ndarray, part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows with equal keys summed (count, nonzero, total) and maxed (max)."""
    order = np.lexsort(cols.T[::-1])
    cols, part = cols[order], part[order]
    new = np.ones(len(cols), dtype=bool)
    new[1:] = (cols[1:] != cols[:-1]).any(axis=1)
    starts = np.flatnonzero(new)
    sums = np.add.reduceat(part[:, :3], starts, axis=0)
    biggest = np.maximum.reduceat(part[:, 3], starts)
    return cols[starts], np.column_stack((sums, biggest))
