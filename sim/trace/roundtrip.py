"""The ioreq round trip of a blocking exit, split into its stages by scheduler records.

An exit that goes to a device model blocks the vCPU in Xen (``hvm_send_ioreq`` then
``hvm_wait_for_io``, hvm.c @4.6 lines 2710 and 447); the device model's reply wakes it
(a runstate change to runnable, which is where xenalyze closes the arc) and it resumes
at its next VM entry. Between the exit and the wake, the first dom0 vCPU that starts
running is taken as the device model being scheduled (cost-anchors.md §6 measured these
stages on a real capture). So a round trip is:

    exit -> dom0 running -> device model done (guest woken) -> guest running (VM entry)

Only arcs closed by a wake-up have one; ``dom0_tsc`` is 0 when no dom0 vCPU started
running inside the arc (dom0 was already running), ``resume_tsc`` 0 when no entry
followed before the vCPU's next exit or the end of the capture.

A read that went to a device model is traced when it completes, not at the exit: Xen
writes the IOPORT/IOMEM record of a write before it sends the ioreq, and of a read at
``finish_access``, which the vCPU reaches only when it re-runs the emulation after the
reply (``hvmemul_do_io``, xen/arch/x86/hvm/emulate.c @RELEASE-4.6.0, lines 149-156 and
193-199). So the arc of a blocked read, closed at the wake-up, has no I/O record; the
``done_io_*`` columns give the first I/O record of the vCPU between its wake-up and its
VM entry (``done_io_kind`` 0: none), the read that completed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RoundTrips:
    domain: np.ndarray
    vcpu: np.ndarray
    io_kind: np.ndarray
    exit_tsc: np.ndarray
    dom0_tsc: np.ndarray
    wake_tsc: np.ndarray
    resume_tsc: np.ndarray
    done_io_kind: np.ndarray
    done_io_write: np.ndarray
    done_io_addr: np.ndarray
    done_io_data: np.ndarray
    done_io_valid: np.ndarray

    def __len__(self) -> int:
        return len(self.exit_tsc)


@dataclass
class _Waiting:
    domain: int
    vcpu: int
    io_kind: int
    exit_tsc: int
    dom0_tsc: int
    wake_tsc: int


_NO_IO = (0, 0, 0, 0, 0)


class RoundTripTracker:
    """Pairs wake-closed arcs with their resume, across batches; finds the dom0 stage."""

    def __init__(self) -> None:
        self.waiting: dict[int, _Waiting] = {}
        self._dom0_seq = np.zeros(0, dtype=np.int64)
        self._dom0_tsc = np.zeros(0, dtype=np.uint64)

    def add_dom0_running(self, seq: np.ndarray, tsc: np.ndarray, keep_after: int) -> None:
        """Record dom0 vCPUs starting to run; forget those before ``keep_after``."""
        s = np.concatenate((self._dom0_seq, seq.astype(np.int64)))
        t = np.concatenate((self._dom0_tsc, tsc.astype(np.uint64)))
        keep = s >= keep_after
        self._dom0_seq, self._dom0_tsc = s[keep], t[keep]

    def _dom0_between(self, after: np.ndarray, before: np.ndarray) -> np.ndarray:
        if not len(self._dom0_seq) or not len(after):
            return np.zeros(len(after), dtype=np.uint64)
        j = np.searchsorted(self._dom0_seq, after, side="right")
        jj = np.minimum(j, len(self._dom0_seq) - 1)
        inside = (j < len(self._dom0_seq)) & (self._dom0_seq[jj] < before)
        return np.where(inside, self._dom0_tsc[jj], np.uint64(0))

    def process(
        self,
        key: np.ndarray,
        kind: np.ndarray,
        tsc: np.ndarray,
        woken: np.ndarray,
        arcs: dict[str, np.ndarray],
        exit_kind: int,
        entry_kind: int,
        io: dict[str, np.ndarray],
    ) -> RoundTrips:
        """``key``/``kind``/``tsc``: the batch's events sorted by (vCPU, order); ``woken``:
        event indexes of wake closers; ``arcs``: their arc columns (same length); ``io``:
        the events' I/O columns (``io_kind`` 0 for events that are not I/O records)."""
        n = len(kind)
        out: list[tuple[int, ...]] = []
        entries = np.flatnonzero(kind == entry_kind)
        exits = np.flatnonzero(kind == exit_kind)
        io_at = np.flatnonzero(io["io_kind"] != 0)

        def done_io(after: int, k: int, before: int | None) -> tuple[int, ...]:
            """The first I/O record of vCPU ``k`` after event ``after``, before ``before``."""
            j = _next_of(io_at, after, key, k)
            if j is None or before is None or j > before:
                return _NO_IO
            return tuple(
                int(io[c][j]) for c in ("io_kind", "io_write", "io_addr", "io_data", "io_valid")
            )

        first_of_key: dict[int, int] = {}
        if n:
            starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
            first_of_key = dict(zip(key[starts].tolist(), starts.tolist(), strict=True))
        # Carried waits: the vCPU's first entry or exit in this batch settles them.
        for k in list(self.waiting):
            start = first_of_key.get(k)
            if start is None:
                continue
            w = self.waiting.pop(k)
            e = _next_of(entries, start - 1, key, k)
            x = _next_of(exits, start - 1, key, k)
            resumed = e is not None and (x is None or e < x)
            resume = int(tsc[e]) if resumed else 0
            if resume or x is not None:
                row = (w.domain, w.vcpu, w.io_kind, w.exit_tsc, w.dom0_tsc, w.wake_tsc, resume)
                out.append((*row, *done_io(start - 1, k, e if resumed else None)))
            else:
                self.waiting[k] = w
        dom0 = self._dom0_between(arcs["exit_seq"], arcs["end_seq"])
        for i, c in enumerate(woken.tolist()):
            k = int(key[c])
            e = _next_of(entries, c, key, k)
            x = _next_of(exits, c, key, k)
            row = (
                int(arcs["domain"][i]),
                int(arcs["vcpu"][i]),
                int(arcs["io_kind"][i]),
                int(arcs["exit_tsc"][i]),
                int(dom0[i]),
                int(arcs["end_tsc"][i]),
            )
            if e is not None and (x is None or e < x):
                out.append((*row, int(tsc[e]), *done_io(c, k, e)))
            elif x is not None:
                out.append((*row, 0, *_NO_IO))
            else:
                self.waiting[k] = _Waiting(*row)
        return _pack(out)

    def finish(self) -> RoundTrips:
        rows = [
            (w.domain, w.vcpu, w.io_kind, w.exit_tsc, w.dom0_tsc, w.wake_tsc, 0, *_NO_IO)
            for w in self.waiting.values()
        ]
        self.waiting = {}
        return _pack(rows)


def _next_of(positions: np.ndarray, after: int, key: np.ndarray, k: int) -> int | None:
    j = int(np.searchsorted(positions, after, side="right"))
    if j < len(positions) and int(key[positions[j]]) == k:
        return int(positions[j])
    return None


def _pack(rows: list[tuple[int, ...]]) -> RoundTrips:
    # Addresses and data are unsigned 64/32-bit: keep them exact in a uint64 array.
    u = np.asarray(rows, dtype=np.uint64).reshape(-1, 12)
    a = u.astype(np.int64)
    return RoundTrips(
        domain=a[:, 0].astype(np.int32),
        vcpu=a[:, 1].astype(np.int32),
        io_kind=a[:, 2].astype(np.int8),
        exit_tsc=a[:, 3].astype(np.uint64),
        dom0_tsc=a[:, 4].astype(np.uint64),
        wake_tsc=a[:, 5].astype(np.uint64),
        resume_tsc=a[:, 6].astype(np.uint64),
        done_io_kind=a[:, 7].astype(np.int8),
        done_io_write=a[:, 8].astype(bool),
        done_io_addr=u[:, 9],
        done_io_data=u[:, 10],
        done_io_valid=a[:, 11].astype(bool),
    )
