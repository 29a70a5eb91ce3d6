"""What a run records: the trap in flight, per-access latencies, counters, range counts.

Plain records (``array`` columns, dataclasses), no SimPy processes: the processes in
:mod:`sim.model.processes` fill them, :mod:`sim.model.summary` turns them into tables.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import simpy

from sim.xen.ioreq import Access

if TYPE_CHECKING:
    from sim.model.processes import DeviceModelServer, Vcpu


class Trap:
    """One trapped access on its way through Xen and a device model."""

    __slots__ = (
        "access",
        "dm",
        "done",
        "handler",
        "kind",
        "t_resumed",
        "t_selected",
        "t_served",
        "t_trap",
        "vcpu",
        "visits",
        "walk_ns",
    )

    def __init__(
        self, vcpu: Vcpu, kind: str, access: Access, t_trap: float, done: simpy.Event
    ) -> None:
        # t_selected, t_served and t_resumed are set on the way, always before use.
        self.vcpu = vcpu
        self.kind = kind
        self.access = access
        self.t_trap = t_trap
        self.done = done
        self.dm: DeviceModelServer | None = None
        self.handler = ""
        self.visits = 0
        self.walk_ns = 0.0  # time its lookups spent walking rangeset nodes


@dataclass
class Counters:
    """Run-wide counts that are not per-access latencies."""

    accesses: int = 0  # completed traps inside the measurement window
    traps_total: int = 0  # completed traps including warm-up
    maps: int = 0
    failed_maps: int = 0
    unmaps: int = 0
    failed_unmaps: int = 0
    map_visits: int = 0
    walk_ns: float = 0.0  # rangeset walking of the measured traps, summed
    hypercall_ns: float = 0.0
    untracked_ppgtt_writes: int = 0
    null_handled: int = 0
    failed_map_errnos: dict[str, int] = field(default_factory=dict)


class Recorder:
    """Per-access latencies and visits, grouped by (access kind, handler).

    Plain ``array`` columns: 16 bytes per access, so a 10^6-access run stays small.
    """

    def __init__(
        self,
        warmup_ns: float,
        max_accesses: int | None,
        stop: simpy.Event,
        trace: Callable[[Trap], None] | None,
    ) -> None:
        self.warmup_ns = warmup_ns
        self.max_accesses = max_accesses
        self.stop = stop
        self.trace = trace
        self.groups: dict[tuple[str, str], tuple[array[float], array[int]]] = {}
        self.counters = Counters()

    def record(self, trap: Trap) -> None:
        c = self.counters
        c.traps_total += 1
        if self.trace is not None:
            self.trace(trap)
        if trap.t_trap < self.warmup_ns:
            return
        key = (trap.kind, trap.handler)
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = (array("d"), array("q"))
        group[0].append(trap.t_resumed - trap.t_trap)
        group[1].append(trap.visits)
        c.walk_ns += trap.walk_ns
        c.accesses += 1
        if c.accesses == self.max_accesses and not self.stop.triggered:
            self.stop.succeed()


class RangeCountMeter:
    """Time-weighted mean and maximum of the XenGT server's rangeset nodes."""

    def __init__(self, env: simpy.Environment, start: float) -> None:
        self.env = env
        self.start = start
        self.last_t = 0.0
        self.value = 0
        self.area = 0.0
        self.max = 0
        self.at_start = 0

    def update(self, value: int) -> None:
        # Called after every map and unmap hypercall: max() spelled out, no calls; SimPy's
        # clock read directly (see sim/model/processes.py).
        now = self.env._now
        start = self.start
        if now > start:
            last_t = self.last_t
            self.area += self.value * (now - (start if start > last_t else last_t))
        self.last_t = now
        self.value = value
        if value > self.max:
            self.max = value

    def mean(self, end: float) -> float:
        span = end - self.start
        if span <= 0:
            return float(self.value)
        return (self.area + self.value * (end - max(self.last_t, self.start))) / span


@dataclass
class Usage:
    """Busy time (ns, inside the measured window) of each CPU and device-model thread.

    ``dom0_vcpus`` is empty when every thread has a dom0 vCPU of its own (then a
    thread's busy time is its vCPU's); ``pcpus`` lists shared physical CPUs only.
    ``threads`` holds (name, busy ns, requests served); ``locks`` each guest's
    rangeset-lock waits.
    """

    dom0_vcpus: list[tuple[str, float]]
    threads: list[tuple[str, float, int]]
    pcpus: list[tuple[str, float]]
    locks: dict[str, dict[str, float]]


@dataclass
class RunResult:
    """What a run produced: grouped samples, counters and timings (plain records)."""

    groups: dict[tuple[str, str], tuple[array[float], array[int]]]
    counters: Counters
    sim_time_ns: float
    measured_ns: float
    wall_s: float
    ranges: dict[str, dict[str, float]]
    usage: Usage
