"""CPUs that run one thing at a time, under a credit-like scheduler, and their busy time.

A :class:`CpuPool` is a set of CPUs with one run queue: a physical CPU with the guest
vCPUs pinned to it, or dom0's vCPUs with every device-model thread of the host. Whoever
holds a CPU (a vCPU running guest code or Xen's work for it; a thread serving requests)
runs until it blocks or is preempted at one of its boundaries.

**Credit-like, not credit.** The scheduler keeps the three features of Xen 4.6's credit
scheduler (``xen/common/sched_credit.c`` @RELEASE-4.6.0) that decide who waits here:

* *wake-up preference (BOOST)*: a vCPU that wakes from blocking is raised from UNDER to
  BOOST (``csched_vcpu_wake``, lines 1012-1016) and is queued ahead of UNDER vCPUs
  (``__runq_insert`` orders by priority). A tick that finds a BOOSTed vCPU running drops
  it back to UNDER (``csched_vcpu_acct``, lines 853-854; ticks every ``tick_ms``);
* *rate limit*: a running vCPU is not preempted before it has run ``ratelimit_us``
  (``csched_schedule``, lines 1663-1677; default 1000 us, ``sched-if.h`` line 21);
* *time slice*: after ``tslice_ms`` (default 30, line 51) a vCPU yields to a waiting vCPU
  of equal priority, which runs in FIFO order.

Left out: credit accounting (no vCPU runs out of credit, so none is OVER), weights and
caps, load balancing between pCPUs (vCPUs stay pinned; dom0's pool has one shared queue),
and the idle-pCPU tickle (a woken vCPU on a busy pool waits for its queue). Preemption
is decided at the holder's boundaries: between requests for a thread, and at most every
``ratelimit_us`` (at least 100 us, ``XEN_SYSCTL_SCHED_RATELIMIT_MIN``) of guest code
for a vCPU; a higher-priority waiter therefore waits up to one rate-limit period, as
credit's own rate limit makes it wait. dom0's kernel schedules the device-model threads
on its vCPUs; the model applies the same rules there, an [ASSUMPTION] (Linux's CFS has
a wake-up preference and a slice too, with other numbers).

Busy time is counted only inside the measurement window (after warm-up), without SimPy
events: at each release, and for whoever still holds a CPU when the run ends.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import simpy

from sim.model.host import Scheduler

BOOST = 1  # CSCHED_PRI_TS_BOOST (sched_credit.c @4.6, line 58)
UNDER = 0  # CSCHED_PRI_TS_UNDER (line 59), relative to BOOST
#: The shortest preemption check of a run: XEN_SYSCTL_SCHED_RATELIMIT_MIN (us), used when
#: the rate limit is off.
MIN_CHECK_US = 100.0


class Busy:
    """Time spent busy inside ``[window_start, end of run]``, counted at each stop."""

    __slots__ = ("busy_ns", "since", "window_start")

    def __init__(self, window_start: float) -> None:
        self.window_start = window_start
        self.busy_ns = 0.0
        self.since: float | None = None

    def start(self, now: float) -> None:
        self.since = now

    def stop(self, now: float) -> None:
        since = self.since
        if since is not None:
            self.busy_ns += max(0.0, now - max(since, self.window_start))
            self.since = None

    def add(self, start: float, end: float) -> None:
        """A busy span known in full (a thread's service, a hypercall)."""
        # max(0.0, end - max(start, window_start)), without the calls: done per trap.
        window_start = self.window_start
        span = end - (window_start if window_start > start else start)
        if span > 0.0:
            self.busy_ns += span

    def total(self, now: float) -> float:
        """Busy time so far, including a span still running at ``now``."""
        since = self.since
        if since is None:
            return self.busy_ns
        return self.busy_ns + max(0.0, now - max(since, self.window_start))


class Cpu:
    """One CPU of a pool: a physical CPU or one of dom0's vCPUs."""

    __slots__ = ("busy", "holder", "name")

    def __init__(self, name: str, window_start: float) -> None:
        self.name = name
        self.holder: Any = None
        self.busy = Busy(window_start)


class Runner:
    """What a pool schedules: a guest vCPU or a device-model thread."""

    __slots__ = ("cpu", "name", "pri", "run_start")

    def __init__(self, name: str) -> None:
        self.name = name
        self.pri = UNDER
        self.cpu: Cpu | None = None
        self.run_start = 0.0


class CpuPool:
    """CPUs sharing one run queue under the credit-like rules of the module docstring."""

    def __init__(
        self, env: simpy.Environment, cpus: list[Cpu], sched: Scheduler, window_start: float
    ) -> None:
        self.env = env
        self.cpus = cpus
        self.free = list(reversed(cpus))  # pop() hands out the lowest-numbered CPU first
        self.boost: deque[tuple[Runner, simpy.Event]] = deque()
        self.under: deque[tuple[Runner, simpy.Event]] = deque()
        self.tslice_ns = sched.tslice_ms * 1e6
        self.ratelimit_ns = sched.ratelimit_us * 1e3
        self.tick_ns = sched.tick_ms * 1e6
        self.check_ns = max(sched.ratelimit_us, MIN_CHECK_US) * 1e3
        self.window_start = window_start

    # -- taking and giving back a CPU ------------------------------------------------
    def acquire(self, runner: Runner, woken: bool) -> simpy.Event | None:
        """Ask for a CPU. ``None``: granted at once; else an event that fires on grant.

        ``woken``: the runner wakes from blocking, so it is BOOSTed.
        """
        if woken:
            runner.pri = BOOST
        if self.free and not self.boost and not self.under:
            self._grant(runner, self.free.pop())
            return None
        ev = self.env.event()
        (self.boost if runner.pri == BOOST else self.under).append((runner, ev))
        return ev

    def release(self, runner: Runner) -> None:
        """The runner blocks or is preempted: its CPU goes to the next in the queue."""
        cpu = runner.cpu
        assert cpu is not None, f"{runner.name} releases a CPU it does not hold"
        now = self.env.now
        self._tick(runner, now)
        cpu.busy.stop(now)
        cpu.holder = None
        runner.cpu = None
        queue = self.boost or self.under
        if queue:
            waiter, ev = queue.popleft()
            self._grant(waiter, cpu)
            ev.succeed()
        else:
            self.free.append(cpu)

    def should_yield(self, runner: Runner) -> bool:
        """At a boundary of ``runner``'s run: must it give its CPU to a waiter now?"""
        now = self.env.now
        self._tick(runner, now)
        ran = now - runner.run_start
        if self.boost and runner.pri == UNDER and ran >= self.ratelimit_ns:
            return True
        # Time slice over: an equal- or higher-priority waiter runs next.
        equal = self.boost or (self.under and runner.pri == UNDER)
        return ran >= self.tslice_ns and bool(equal)

    def requeue(self, runner: Runner) -> simpy.Event | None:
        """Preempted: back to the tail of its priority class (credit's runq insert)."""
        self.release(runner)
        return self.acquire(runner, woken=False)

    # -- internals ---------------------------------------------------------------------
    def _grant(self, runner: Runner, cpu: Cpu) -> None:
        now = self.env.now
        cpu.holder = runner
        cpu.busy.start(now)
        runner.cpu = cpu
        runner.run_start = now

    def _tick(self, runner: Runner, now: float) -> None:
        # A tick (every tick_ns, in absolute time) that found the runner running drops
        # BOOST to UNDER; checked lazily, without a tick event.
        if runner.pri == BOOST and now // self.tick_ns > runner.run_start // self.tick_ns:
            runner.pri = UNDER
