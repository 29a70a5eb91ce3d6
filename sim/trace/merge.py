"""Merge the per-pCPU record streams into one stream, in the order xenalyze processes them.

xenalyze (tools/xentrace/xenalyze.c, ``process_records``, ``record_order_bubble``,
``record_order_insert``, ``__fill_in_record_info``) keeps the active pCPUs in a list
sorted by each one's ``order_tsc`` and always processes the head:

* a record without a TSC takes the last TSC seen on its pCPU and leaves ``order_tsc``
  alone, so it is processed right after its predecessor;
* after a record is processed, its pCPU moves down past the pCPUs whose ``order_tsc`` is
  *strictly* smaller than its new one: among equal ``order_tsc`` the pCPU processed most
  recently goes first (not the lower pCPU number, not file order);
* a ``TRC_LOST_RECORDS`` record is processed twice: first ordered by the TSC of the first
  lost record (its data), then again, as the end of the loss, at its own TSC;
* the pCPUs of the first "epoch" (windows up to the first repeated pCPU) are activated at
  start, each inserted at the head with ``order_tsc`` 0, so their activations run in
  reverse order of the file.

Here that order is computed with numpy: per pCPU, the running maximum of ``order_tsc`` is
the key under which the k-way merge emits a record; equal keys on one pCPU form a block
that is processed without interruption; blocks of different pCPUs with the same key are
ordered by the rank of each pCPU's previous block, latest first. The merge streams: a
record is emitted once every pCPU that may still produce an earlier one has been read up
to it (a pCPU's next window is peeked for its first TSC, so an idle pCPU does not hold
the rest back).

Where this differs from xenalyze (documented limits): a pCPU first seen after the first
epoch joins when its first window is read rather than when xenalyze's file scan happens to
pass it; and xenalyze's TSC-skew correction (it shifts a pCPU's later TSCs when runstate
records contradict each other) is reported, not applied.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from sim.trace import format as fmt
from sim.trace.decode import (
    BATCH_BYTES,
    DATA_WORDS,
    RecordBatch,
    WindowIndex,
    iter_batches,
    peek_first_key,
)

#: Row kinds beside real records: a pCPU's activation (xenalyze inserts it with
#: ``order_tsc`` 0), its deactivation after its last record, the second pass of a
#: lost-records record.
REAL, ACTIVATE, DEACTIVATE, LOST_END = 0, 1, 2, 3
_COLUMNS = ("event", "extra", "has_tsc", "tsc", "data", "offset", "virt", "key")


@dataclass
class Merged:
    """Records in processing order; ``seq`` numbers them across the whole capture."""

    seq: np.ndarray
    pcpu: np.ndarray
    event: np.ndarray
    extra: np.ndarray
    has_tsc: np.ndarray
    tsc: np.ndarray  # the TSC xenalyze gives the record (its own, or its pCPU's last)
    data: np.ndarray
    offset: np.ndarray
    virt: np.ndarray

    def __len__(self) -> int:
        return len(self.seq)


class _Pcpu:
    __slots__ = (
        "done",
        "epoch_rank",
        "last_e",
        "last_o",
        "last_seq",
        "last_tsc",
        "pending",
        "windows",
    )

    def __init__(self, windows: list[int], last_seq: int) -> None:
        #: For a pCPU of the first epoch: where its activation falls among the others
        #: (xenalyze activates them all before any record, the file's first one last).
        #: Its key-0 block ranks there, however late this merge reads its first window.
        self.epoch_rank: int | None = None
        self.windows = windows  # window ids of this pCPU still to decode, in file order
        self.last_tsc = 0
        self.last_o = 0
        self.last_e = 0
        self.last_seq = last_seq
        self.done = False
        self.pending: dict[str, np.ndarray] | None = None


def _ffill(values: np.ndarray, known: np.ndarray, carry: int) -> np.ndarray:
    """``values`` where ``known``, else the last known value before (``carry`` at first)."""
    idx = np.where(known, np.arange(len(values)), -1)
    np.maximum.accumulate(idx, out=idx)
    out = np.where(idx >= 0, values[np.maximum(idx, 0)], np.uint64(carry))
    return out.astype(np.uint64)


class Merger:
    """Feed it decoded batches; it yields records in xenalyze's processing order."""

    def __init__(self, index: WindowIndex) -> None:
        self.index = index
        self.pcpus: dict[int, _Pcpu] = {}
        self.next_seq = 0
        by_cpu: dict[int, list[int]] = {}
        for w, cpu in enumerate(index.pcpus.tolist()):
            by_cpu.setdefault(cpu, []).append(w)
        self._windows = by_cpu
        epoch = index.pcpus[: index.first_epoch].tolist()
        n = len(epoch)
        # Inserted in file order, each at the head: the last one is activated first.
        for k, cpu in enumerate(epoch):
            self.pcpus[cpu] = _Pcpu(list(by_cpu[cpu]), last_seq=k - 2 * n - 1)
            self.pcpus[cpu].epoch_rank = -1 - k
        self._fh = index.path.open("rb")

    def close(self) -> None:
        self._fh.close()

    # -- intake ---------------------------------------------------------------------------
    def add(self, batch: RecordBatch) -> None:
        window_cpus = self.index.pcpus[batch.window_ids]
        for cpu in np.unique(window_cpus).tolist():
            p = self.pcpus.get(cpu)
            if p is None:  # first seen after the first epoch: joins now, at the head
                p = self.pcpus[cpu] = _Pcpu(list(self._windows[cpu]), self.next_seq - 1)
            rows = np.flatnonzero(batch.pcpu == cpu)
            mine = batch.window_ids[window_cpus == cpu].tolist()
            fresh = bool(p.windows) and p.windows[0] == self._windows[cpu][0]
            p.windows = [w for w in p.windows if w not in set(mine)]
            self._append(p, batch, rows, activate=fresh, deactivate=not p.windows)

    def _append(
        self, p: _Pcpu, b: RecordBatch, rows: np.ndarray, *, activate: bool, deactivate: bool
    ) -> None:
        event = b.event[rows]
        lost = event == fmt.TRC_LOST_RECORDS
        rep = np.where(lost, 2, 1)
        take = np.repeat(rows, rep)
        virt = np.zeros(len(take), dtype=np.int8)
        second = np.zeros(len(take), dtype=bool)
        if lost.any():
            first_of = np.cumsum(rep) - rep
            second[first_of[lost] + 1] = True
            virt[second] = LOST_END
        cols = {
            "event": b.event[take],
            "extra": b.extra[take],
            "has_tsc": b.has_tsc[take] & ~second,
            "tsc": b.tsc[take],
            "data": b.data[take],
            "offset": b.offset[take],
            "virt": virt,
        }
        if activate or deactivate:
            cols = _add_virtual(cols, activate, deactivate)
        has = cols["has_tsc"]
        act = cols["virt"] == ACTIVATE
        # ri->tsc: own TSC, else the pCPU's last (the lost-records end keeps the record's).
        tsc = _ffill(cols["tsc"], has, p.last_tsc)
        # order_tsc: set by TSC records (a 4-word lost record by its first lost TSC), kept
        # by the others; the end of a loss takes its own TSC if that is later.
        lost_rec = (cols["event"] == fmt.TRC_LOST_RECORDS) & (cols["virt"] == REAL)
        own = tsc.copy()
        first_lost = cols["data"][:, 2].astype(np.uint64) | (
            cols["data"][:, 3].astype(np.uint64) << np.uint64(32)
        )
        own = np.where(lost_rec & has & (cols["extra"] == 4), first_lost, own)
        sets = has.copy()
        sets[act] = True
        own[act] = 0
        end = cols["virt"] == LOST_END
        order = _ffill(own, sets, p.last_o)
        if end.any():
            order[end] = np.maximum(order[np.flatnonzero(end) - 1], tsc[end])
            order = _ffill(order, sets | end, p.last_o)
        key = np.maximum.accumulate(np.maximum(order, np.uint64(p.last_e)))
        cols["tsc"] = tsc
        cols["key"] = key
        if len(key):
            p.last_tsc = int(tsc[-1])
            p.last_o = int(order[-1])
            p.last_e = int(key[-1])
        if p.pending is None or len(p.pending["key"]) == 0:
            p.pending = cols
        else:
            p.pending = {k: np.concatenate((p.pending[k], cols[k])) for k in _COLUMNS}
        p.done = deactivate

    # -- output ---------------------------------------------------------------------------
    def _horizon(self, p: _Pcpu) -> float:
        if p.done:
            return float("inf")
        peek = peek_first_key(self.index, p.windows[0], self._fh)
        return float(max(p.last_e, peek if peek is not None else 0))

    def drain(self, final: bool = False) -> Merged | None:
        """Emit every pending record no unread record can precede."""
        frontier = float("inf")
        if not final:
            for p in self.pcpus.values():
                frontier = min(frontier, self._horizon(p))
        parts: list[tuple[int, dict[str, np.ndarray]]] = []
        for cpu, p in self.pcpus.items():
            pend = p.pending
            if pend is None or not len(pend["key"]):
                continue
            if frontier == float("inf"):
                n = len(pend["key"])
            else:
                n = int(np.searchsorted(pend["key"], np.uint64(frontier), side="left"))
            if n:
                parts.append((cpu, {k: v[:n] for k, v in pend.items()}))
                p.pending = {k: v[n:] for k, v in pend.items()}
        if not parts:
            return None
        return self._order(parts)

    def _order(self, parts: list[tuple[int, dict[str, np.ndarray]]]) -> Merged:
        cpu = np.concatenate([np.full(len(c["key"]), k, dtype=np.int32) for k, c in parts])
        cols = {k: np.concatenate([c[k] for _, c in parts]) for k in _COLUMNS}
        key = cols["key"]
        order = np.argsort(key, kind="stable")
        k_s, c_s = key[order], cpu[order]
        n = len(order)
        new_run = np.ones(n, dtype=bool)
        new_run[1:] = k_s[1:] != k_s[:-1]
        mixed = np.zeros(n, dtype=bool)
        mixed[1:] = ~new_run[1:] & (c_s[1:] != c_s[:-1])
        if mixed.any():
            order = self._break_ties(order, c_s, k_s, new_run, mixed)
            c_s = cpu[order]
        seq = self.next_seq + np.arange(n, dtype=np.int64)
        # Each pCPU's last rank, for ties in the next call.
        key_final = key[order]
        last: dict[int, int] = {}
        for i in range(n - 1, -1, -1):
            c = int(c_s[i])
            if c not in last:
                last[c] = self._rank(c, int(key_final[i]), int(seq[i]))
                if len(last) == len(parts):
                    break
        for c, rank in last.items():
            self.pcpus[c].last_seq = rank
        self.next_seq += n
        return Merged(
            seq=seq,
            pcpu=c_s,
            event=cols["event"][order],
            extra=cols["extra"][order],
            has_tsc=cols["has_tsc"][order],
            tsc=cols["tsc"][order],
            data=cols["data"][order],
            offset=cols["offset"][order],
            virt=cols["virt"][order],
        )

    def _rank(self, cpu: int, key: int, seq: int) -> int:
        p = self.pcpus[cpu]
        return p.epoch_rank if key == 0 and p.epoch_rank is not None else seq

    def _break_ties(
        self,
        order: np.ndarray,
        c_s: np.ndarray,
        k_s: np.ndarray,
        new_run: np.ndarray,
        mixed: np.ndarray,
    ) -> np.ndarray:
        """Among blocks of equal key, the pCPU whose previous block ran last goes first."""
        n = len(order)
        run_start = np.flatnonzero(new_run)
        run_end = np.append(run_start[1:], n)
        run_of = np.cumsum(new_run) - 1
        tied_runs = np.unique(run_of[mixed])
        # Position of each sorted row's predecessor on the same pCPU (-1: none this call).
        prev = np.full(n, -1, dtype=np.int64)
        by_cpu = np.argsort(c_s, kind="stable")
        same = c_s[by_cpu[1:]] == c_s[by_cpu[:-1]]
        prev[by_cpu[1:][same]] = by_cpu[:-1][same]
        cl = c_s.tolist()
        pos = np.arange(n, dtype=np.int64)  # final position of each sorted row
        out = order.copy()
        for r in tied_runs.tolist():
            a, b = int(run_start[r]), int(run_end[r])
            blocks: list[tuple[int, int, int]] = []  # (rank of previous block, start, end)
            i = a
            while i < b:
                j = i
                while j < b and cl[j] == cl[i]:
                    j += 1
                before = int(prev[i])
                rank = (
                    self._rank(cl[i], int(k_s[before]), self.next_seq + int(pos[before]))
                    if before >= 0
                    else self.pcpus[cl[i]].last_seq
                )
                blocks.append((rank, i, j))
                i = j
            blocks.sort(key=lambda blk: -blk[0])
            rows = np.concatenate([np.arange(s, e) for _, s, e in blocks])
            out[a:b] = order[rows]
            pos[rows] = np.arange(a, b)  # later runs find their predecessors through pos
        return out


def _add_virtual(
    cols: dict[str, np.ndarray], activate: bool, deactivate: bool
) -> dict[str, np.ndarray]:
    def one(virt: int) -> dict[str, np.ndarray]:
        return {
            "event": np.zeros(1, dtype=np.uint32),
            "extra": np.zeros(1, dtype=np.int8),
            "has_tsc": np.zeros(1, dtype=bool),
            "tsc": np.zeros(1, dtype=np.uint64),
            "data": np.zeros((1, DATA_WORDS), dtype=np.uint32),
            "offset": np.full(1, -1, dtype=np.int64),
            "virt": np.full(1, virt, dtype=np.int8),
        }

    pieces = ([one(ACTIVATE)] if activate else []) + [cols]
    if deactivate:
        pieces.append(one(DEACTIVATE))
    return {k: np.concatenate([p[k] for p in pieces]) for k in cols}


def merged_stream(
    index: WindowIndex, batch_bytes: int = BATCH_BYTES
) -> Iterator[tuple[Merged, list[str]]]:
    """Decode and merge a whole capture, batch by batch."""
    merger = Merger(index)
    try:
        for batch, warnings in iter_batches(index, batch_bytes):
            merger.add(batch)
            out = merger.drain()
            if out is not None or warnings:
                yield (out if out is not None else _empty()), warnings
        out = merger.drain(final=True)
        if out is not None:
            yield out, []
    finally:
        merger.close()


def _empty() -> Merged:
    z = np.zeros(0, dtype=np.int64)
    return Merged(
        seq=z,
        pcpu=z.astype(np.int32),
        event=z.astype(np.uint32),
        extra=z.astype(np.int8),
        has_tsc=z.astype(bool),
        tsc=z.astype(np.uint64),
        data=np.zeros((0, DATA_WORDS), dtype=np.uint32),
        offset=z,
        virt=z.astype(np.int8),
    )
