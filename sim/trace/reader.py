"""Read a capture end to end: decode -> merge -> scheduler -> exit arcs -> summaries.

The API for everything that reads captures (``trace summarize``, and fitting or replaying
a capture):

* :class:`Capture` ``(path)`` validates the file (``InputError`` if it is not a capture)
  and :meth:`Capture.arcs` streams ``(ArcBatch, RoundTrips)`` pairs: every complete exit
  arc with its exit reason, cycles, pCPU, I/O record (port or MMIO address, direction,
  data) and NPF record (gpa, p2m type), in the order xenalyze closes them; and the
  round trips of exits that blocked (exit, dom0 running, guest woken, VM entry). After
  the stream ends, ``warnings``, ``problems``, ``lost_records`` and ``records`` say what
  was in the file.
* :func:`summarize_capture` folds those into a :class:`CaptureSummary` (per vCPU and exit
  reason, per address, per p2m type, per round-trip stage).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sim.trace.arcs import ArcBatch, ArcBuilder
from sim.trace.decode import BATCH_BYTES, index_windows
from sim.trace.merge import REAL, merged_stream
from sim.trace.roundtrip import RoundTrips
from sim.trace.sched import Scheduler
from sim.trace.stats import CycleStats, FlatStats, GroupedStats

Progress = Callable[[int, int], None]
STAGES = ("exit_to_dom0", "dom0_to_done", "done_to_resume", "exit_to_resume")


class Capture:
    """One capture file; :meth:`arcs` reads it (once per call) in bounded memory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.index = index_windows(self.path)
        self.warnings: list[str] = list(self.index.warnings)
        self.problems: dict[str, int] = {}
        self.records = 0
        self.lost_records = 0
        self.lost_events = 0
        self.ignored_hvm = 0
        self.pcpus = sorted(set(self.index.pcpus.tolist()))
        self.first_tsc = 0
        self.last_tsc = 0

    @property
    def file_size(self) -> int:
        return self.index.file_size

    def arcs(
        self, progress: Progress | None = None, batch_bytes: int = BATCH_BYTES
    ) -> Iterator[tuple[ArcBatch, RoundTrips]]:
        sched = Scheduler()
        builder = ArcBuilder()
        self.warnings = list(self.index.warnings)
        self.records = 0
        first, last = None, 0
        for merged, warnings in merged_stream(self.index, batch_bytes):
            self.warnings.extend(warnings)
            if len(merged):
                real = merged.virt == REAL
                self.records += int(real.sum())
                stamped = merged.tsc[real & merged.has_tsc]
                if len(stamped):
                    lo, hi = int(stamped.min()), int(stamped.max())
                    first = lo if first is None else min(first, lo)
                    last = max(last, hi)
                events = sched.process(merged)
                yield builder.process(merged, events)
                if progress is not None:
                    done = merged.offset[merged.offset >= 0]
                    if len(done):
                        progress(int(done.max()), self.file_size)
        tail = builder.trips.finish()
        if len(tail):
            yield _no_arcs(), tail
        self.first_tsc, self.last_tsc = first or 0, last
        self.problems = dict(sched.problems)
        self.lost_records, self.lost_events = sched.lost_records, sched.lost_events
        self.ignored_hvm = builder.ignored_hvm
        if progress is not None:
            progress(self.file_size, self.file_size)


def _no_arcs() -> ArcBatch:
    z = np.zeros(0, dtype=np.int64)
    return ArcBatch(*(z for _ in range(17)))


@dataclass
class CaptureSummary:
    path: str
    file_size: int
    records: int
    pcpus: list[int]
    first_tsc: int
    last_tsc: int
    cpu_hz: float | None
    exits: GroupedStats = field(default_factory=GroupedStats)  # (domain, vcpu, reason)
    addresses: FlatStats = field(default_factory=FlatStats)  # (domain, kind, addr, write)
    npf: GroupedStats = field(default_factory=GroupedStats)  # (domain, p2m type)
    stages: dict[int, dict[str, CycleStats]] = field(default_factory=dict)
    lost_records: int = 0
    lost_events: int = 0
    warnings: list[str] = field(default_factory=list)
    problems: dict[str, int] = field(default_factory=dict)


def summarize_capture(
    path: str | Path,
    cpu_hz: float | None = None,
    domain: int | None = None,
    progress: Progress | None = None,
    batch_bytes: int = BATCH_BYTES,
) -> CaptureSummary:
    """Per-vCPU exit reasons, addresses, p2m types and round-trip stages of a capture."""
    cap = Capture(path)
    exits, addresses, npf = GroupedStats(), FlatStats(), GroupedStats()
    stages: dict[int, dict[str, CycleStats]] = {}
    for arcs, trips in cap.arcs(progress, batch_bytes):
        keep = np.ones(len(arcs), dtype=bool) if domain is None else arcs.domain == domain
        dom, cyc = arcs.domain[keep], arcs.cycles[keep]
        exits.add([dom, arcs.vcpu[keep], arcs.exit_reason[keep]], cyc)
        io = arcs.io_kind[keep] != 0
        addresses.add(
            [
                dom[io],
                arcs.io_kind[keep][io],
                arcs.io_addr[keep][io].astype(np.int64),
                arcs.io_write[keep][io],
            ],
            cyc[io],
        )
        has_npf = arcs.npf_p2mt[keep] >= 0
        npf.add([dom[has_npf], arcs.npf_p2mt[keep][has_npf]], cyc[has_npf])
        _add_stages(stages, trips, domain)
    return CaptureSummary(
        path=str(path),
        file_size=cap.file_size,
        records=cap.records,
        pcpus=cap.pcpus,
        first_tsc=cap.first_tsc,
        last_tsc=cap.last_tsc,
        cpu_hz=cpu_hz,
        exits=exits,
        addresses=addresses,
        npf=npf,
        stages=stages,
        lost_records=cap.lost_records,
        lost_events=cap.lost_events,
        warnings=cap.warnings,
        problems=cap.problems,
    )


def _add_stages(
    stages: dict[int, dict[str, CycleStats]], trips: RoundTrips, domain: int | None
) -> None:
    """Round trips of I/O exits whose every stage is known, per domain."""
    # An I/O exit: its record came inside the arc, or (a read) just after the wake-up.
    io = (trips.io_kind != 0) | (trips.done_io_kind != 0)
    full = io & (trips.dom0_tsc > 0) & (trips.resume_tsc > 0)
    if domain is not None:
        full &= trips.domain == domain
    if not full.any():
        return
    ex, d0 = trips.exit_tsc[full], trips.dom0_tsc[full]
    wake, res = trips.wake_tsc[full], trips.resume_tsc[full]
    spans = {
        "exit_to_dom0": d0.astype(np.int64) - ex.astype(np.int64),
        "dom0_to_done": wake.astype(np.int64) - d0.astype(np.int64),
        "done_to_resume": res.astype(np.int64) - wake.astype(np.int64),
        "exit_to_resume": res.astype(np.int64) - ex.astype(np.int64),
    }
    doms = trips.domain[full]
    for d in np.unique(doms).tolist():
        sel = doms == d
        per = stages.setdefault(int(d), {name: CycleStats() for name in STAGES})
        for name, values in spans.items():
            per[name].add(np.maximum(values[sel], 0))
