"""One domain's I/O traps, per vCPU and in order: what ``trace fit`` and replay read.

:func:`io_traps` streams a capture (:meth:`sim.trace.reader.Capture.arcs`) and yields
chunks of :data:`TRAP_DTYPE` rows, one per I/O trap of the domain, each vCPU's rows in
the order they happened. Memory stays at one decode batch plus the traps still waiting
for their VM entry (normally one per vCPU).

**Which exits are I/O traps** (the ones the model represents):

* an arc with an IOPORT or IOMEM record: a port, or an MMIO address (a page-table write
  when its NPF record has p2m type 15, ``p2m_mmio_write_dm`` / ``p2m_ioreq_server``);
* an IO_INSTRUCTION arc without one, or an EPT_VIOLATION arc whose NPF record has p2m type
  4 (``p2m_mmio_dm``) or 15 without one: a read that went to a device model, which Xen
  traces only when it completes, after the wake-up that closed the arc
  (:mod:`sim.trace.roundtrip`). Its address is that completion record's, else the NPF
  record's gpa; a port read without either has an unknown port (``addr_known`` 0).

Every other exit of the domain (HLT, interrupts, CPUID, ...) is not represented by the
model; :class:`DomainStats` counts them per vCPU and exit reason.

**Times of a trap.** ``exit_tsc`` is its VM exit. ``end_tsc`` is where xenalyze ends its
arc: the VM entry, or the wake-up when the vCPU blocked on the device model.
``resume_tsc`` is the VM entry that resumed the vCPU: ``end_tsc`` for an arc closed by
its entry, the entry after the wake-up otherwise (0 if the capture has none). ``gap_tsc``
is the guest's time between traps: from the previous trap's ``resume_tsc`` to this exit
(``gap_kind`` ``GAP_MEASURED``); a vCPU's first trap counts from the capture's first TSC
(``GAP_FIRST``, filled in by the caller, who knows it only at the end); after a trap with
no known resume, from its ``end_tsc`` (``GAP_APPROX``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from sim.trace import format as fmt
from sim.trace.arcs import CLOSED_BY_ENTRY, IO_PIO, ArcBatch
from sim.trace.reader import Capture
from sim.trace.roundtrip import RoundTrips

SPACE_PORT, SPACE_MMIO, SPACE_PAGE_TABLE = 0, 1, 2  # as sim.model.replay's SPACE_*
GAP_MEASURED, GAP_FIRST, GAP_APPROX = 0, 1, 2
TRAP_DTYPE = np.dtype(
    [
        ("vcpu", "<i4"),
        ("reason", "<i4"),
        ("exit_seq", "<i8"),
        ("exit_tsc", "<u8"),
        ("end_tsc", "<u8"),
        ("resume_tsc", "<u8"),
        ("dom0_tsc", "<u8"),
        ("wake_tsc", "<u8"),
        ("gap_tsc", "<u8"),
        ("addr", "<u8"),
        ("data", "<u4"),
        ("gap_kind", "u1"),
        ("closed_by", "u1"),
        ("space", "u1"),
        ("write", "u1"),
        ("addr_known", "u1"),
        ("data_valid", "u1"),
        ("pending", "u1"),  # closed by a wake-up, its round trip not seen yet
    ]
)
CPUID = 10  # VMX exit reason (an AMD capture's CPUID exits are not used)
#: CPUID arcs kept for the exit/entry cost: the first this many (memory stays bounded).
MAX_CPUID_ARCS = 200_000


@dataclass
class DomainStats:
    """What a pass over the capture saw besides the domain's I/O traps."""

    domain: int
    #: (vcpu, exit reason, is an I/O trap) -> [arcs, cycles], for the domain's arcs
    exits: dict[tuple[int, int, bool], list[int]] = field(default_factory=dict)
    io_exits: dict[int, int] = field(default_factory=dict)  # vcpu -> I/O traps handed out
    domains: dict[int, int] = field(default_factory=dict)  # every domain -> arcs
    cpuid_cycles: list[np.ndarray] = field(default_factory=list)
    unknown_port_reads: int = 0
    completed_after_wake: int = 0

    def add(self, arcs: ArcBatch, is_io: np.ndarray) -> None:
        doms, counts = np.unique(arcs.domain, return_counts=True)
        for d, n in zip(doms.tolist(), counts.tolist(), strict=True):
            self.domains[d] = self.domains.get(d, 0) + n
        mine = arcs.domain == self.domain
        vc, rs, cy = arcs.vcpu[mine], arcs.exit_reason[mine], arcs.cycles[mine]
        io = is_io[mine]
        key = (vc.astype(np.int64) << 33) | ((rs.astype(np.int64) & 0xFFFFFFFF) << 1) | io
        uk, inv = np.unique(key, return_inverse=True)
        n = np.bincount(inv, minlength=len(uk))
        c = np.bincount(inv, weights=cy.astype(np.float64), minlength=len(uk))
        for k, kn, kc in zip(uk.tolist(), n.tolist(), c.tolist(), strict=True):
            slot = self.exits.setdefault((k >> 33, (k >> 1) & 0xFFFFFFFF, bool(k & 1)), [0, 0])
            slot[0] += kn
            slot[1] += int(kc)
        cpuid = (rs == CPUID) & ~io
        kept = sum(len(c) for c in self.cpuid_cycles)
        if cpuid.any() and kept < MAX_CPUID_ARCS:
            self.cpuid_cycles.append(cy[cpuid][: MAX_CPUID_ARCS - kept].astype(np.float64))

    def count(self, out: np.ndarray) -> None:
        """Account a chunk of I/O traps handed out."""
        for v, n in zip(*np.unique(out["vcpu"], return_counts=True), strict=True):
            self.io_exits[int(v)] = self.io_exits.get(int(v), 0) + int(n)
        self.unknown_port_reads += int((out["addr_known"] == 0).sum())

    @property
    def vcpus(self) -> list[int]:
        """Every vCPU of the domain that has a complete arc in the capture."""
        return sorted({v for v, _, _ in self.exits})

    def not_modelled(self) -> dict[int, tuple[int, int]]:
        """Exit reason -> (arcs, cycles) of the domain's exits the model does not represent."""
        out: dict[int, tuple[int, int]] = {}
        for (_, r, io), (n, c) in self.exits.items():
            if not io:
                n0, c0 = out.get(r, (0, 0))
                out[r] = (n0 + n, c0 + c)
        return out


def classify(arcs: ArcBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per arc: is it an I/O trap, its space, and whether its address is known (before
    completion records are looked at)."""
    p2mt = arcs.npf_p2mt
    wp = p2mt == fmt.P2M_IOREQ_SERVER
    recorded = arcs.io_kind != 0
    port_read = ~recorded & (arcs.exit_reason == fmt.EXIT_IO_INSTRUCTION)
    mmio_read = (
        ~recorded & (arcs.exit_reason == fmt.EXIT_EPT_VIOLATION) & ((p2mt == fmt.P2M_MMIO_DM) | wp)
    )
    is_io = recorded | port_read | mmio_read
    space = np.where(
        (arcs.io_kind == IO_PIO) | port_read,
        SPACE_PORT,
        np.where(wp, SPACE_PAGE_TABLE, SPACE_MMIO),
    ).astype(np.uint8)
    known = recorded | mmio_read
    return is_io, space, known


def _rows(arcs: ArcBatch, sel: np.ndarray, space: np.ndarray, known: np.ndarray) -> np.ndarray:
    rows = np.zeros(int(sel.sum()), dtype=TRAP_DTYPE)
    rows["vcpu"] = arcs.vcpu[sel]
    rows["reason"] = arcs.exit_reason[sel]
    rows["exit_seq"] = arcs.exit_seq[sel]
    rows["exit_tsc"] = arcs.exit_tsc[sel]
    rows["end_tsc"] = arcs.end_tsc[sel]
    by_entry = arcs.closed_by[sel] == CLOSED_BY_ENTRY
    rows["resume_tsc"] = np.where(by_entry, arcs.end_tsc[sel], 0)
    rows["closed_by"] = arcs.closed_by[sel]
    rows["pending"] = ~by_entry
    rows["space"] = space[sel]
    recorded = arcs.io_kind[sel] != 0
    rows["addr"] = np.where(
        recorded, arcs.io_addr[sel], np.where(space[sel] != SPACE_PORT, arcs.npf_gpa[sel], 0)
    )
    # An access without its record is a read (writes are traced at the exit), except a
    # fault on a write-protected page, which only a write takes.
    rows["write"] = np.where(recorded, arcs.io_write[sel], space[sel] == SPACE_PAGE_TABLE)
    rows["data"] = (arcs.io_data[sel] & 0xFFFFFFFF).astype(np.uint32)
    rows["data_valid"] = recorded & arcs.io_data_valid[sel]
    rows["addr_known"] = known[sel]
    return rows


class _Resolver:
    """Holds traps until their resume is known, and hands them out in per-vCPU order."""

    def __init__(self) -> None:
        self.pending = np.zeros(0, dtype=TRAP_DTYPE)
        self.last_resume: dict[int, int] = {}  # vcpu -> resume (or end) TSC of its last trap
        self.last_known: dict[int, bool] = {}

    def add(self, rows: np.ndarray, trips: RoundTrips, domain: int, stats: DomainStats) -> None:
        rows = np.concatenate((self.pending, rows))
        mine = trips.domain == domain
        if mine.any() and len(rows):
            waiting = np.flatnonzero(rows["pending"] == 1)
            where = {(int(rows["vcpu"][i]), int(rows["exit_tsc"][i])): i for i in waiting.tolist()}
            for t in np.flatnonzero(mine).tolist():
                i = where.get((int(trips.vcpu[t]), int(trips.exit_tsc[t])))
                if i is None:
                    continue  # a trip of an exit that is not an I/O trap
                r = rows[i]  # a view: assignments go into ``rows``
                r["pending"] = 0
                r["resume_tsc"] = trips.resume_tsc[t]
                r["dom0_tsc"] = trips.dom0_tsc[t]
                r["wake_tsc"] = trips.wake_tsc[t]
                if trips.done_io_kind[t] != 0 and r["space"] != SPACE_PAGE_TABLE:
                    stats.completed_after_wake += 1
                    r["space"] = SPACE_PORT if trips.done_io_kind[t] == IO_PIO else SPACE_MMIO
                    r["addr"] = trips.done_io_addr[t]
                    r["write"] = trips.done_io_write[t]
                    r["data"] = trips.done_io_data[t] & 0xFFFFFFFF
                    r["data_valid"] = trips.done_io_valid[t]
                    r["addr_known"] = 1
        self.pending = rows

    def take(self, final: bool) -> np.ndarray:
        """Traps ready to hand out: per vCPU, those before its first unresolved one."""
        rows = self.pending
        if not len(rows):
            return rows
        rows = rows[np.lexsort((rows["exit_seq"], rows["vcpu"]))]
        unresolved = (rows["pending"] == 1) & (not final)
        vcpu = rows["vcpu"]
        starts = np.flatnonzero(np.r_[True, vcpu[1:] != vcpu[:-1]])
        blocked = np.maximum.accumulate(np.where(unresolved, np.arange(len(rows)), -1))
        group_start = np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
        ready = blocked < group_start  # no unresolved trap from the vCPU's start up to here
        out, self.pending = rows[ready], rows[~ready]
        self._gaps(out)
        return out

    def _gaps(self, rows: np.ndarray) -> None:
        vcpu = rows["vcpu"]
        for v in np.unique(vcpu).tolist():
            idx = np.flatnonzero(vcpu == v)
            exit_tsc = rows["exit_tsc"][idx].astype(np.int64)
            resume = rows["resume_tsc"][idx].astype(np.int64)
            known = resume > 0
            base = np.where(known, resume, rows["end_tsc"][idx].astype(np.int64))
            prev_base = np.r_[self.last_resume.get(v, 0), base[:-1]]
            prev_known = np.r_[self.last_known.get(v, True), known[:-1]]
            first = np.zeros(len(idx), dtype=bool)
            if v not in self.last_resume:
                first[0] = True
            gaps = np.maximum(exit_tsc - prev_base, 0)
            rows["gap_tsc"][idx] = np.where(first, 0, gaps)
            rows["gap_kind"][idx] = np.where(
                first, GAP_FIRST, np.where(prev_known, GAP_MEASURED, GAP_APPROX)
            )
            self.last_resume[v] = int(base[-1])
            self.last_known[v] = bool(known[-1])


def io_traps(
    capture: Capture,
    domain: int,
    stats: DomainStats,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[np.ndarray]:
    """Chunks of the domain's I/O traps (see the module docstring); ``stats`` fills up."""
    resolver = _Resolver()
    for arcs, trips in capture.arcs(progress):
        is_io, space, known = classify(arcs)
        stats.add(arcs, is_io)
        sel = is_io & (arcs.domain == domain)
        resolver.add(_rows(arcs, sel, space, known), trips, domain, stats)
        out = resolver.take(final=False)
        if len(out):
            stats.count(out)
            yield out
    out = resolver.take(final=True)
    if len(out):
        stats.count(out)
        yield out


class Spool:
    """Rows of one dtype appended to a file, read back as a read-only memory map: one
    domain's traps stay on disk, not in memory, however long the capture."""

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self.path = path
        self.dtype = dtype
        self.count = 0
        self._fh: BinaryIO | None = path.open("wb")

    def append(self, rows: np.ndarray) -> None:
        assert self._fh is not None, "spool already closed"
        self._fh.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        self.count += len(rows)

    def close(self) -> np.ndarray:
        """Finish writing; the rows as a memory map (an empty array if there are none)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if not self.count:
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(self.path, dtype=self.dtype, mode="r+", shape=(self.count,))
