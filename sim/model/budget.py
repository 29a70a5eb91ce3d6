"""What a run may cost, and trap cycles that would never advance simulated time.

Three guards, so that no scenario can hang a run:

* :func:`zero_time_cycles` refuses, at validation, a scenario in which one turn of a
  vCPU's loop can take no simulated time: SimPy would then process events at one instant
  forever. It is computed from the scenario's fields along every path a turn can take
  (:func:`trap_paths`, the one table to extend when the model's trap path changes).
* :func:`estimate_run` tells, before a run, how many events it will take (an upper
  bound: contention only makes turns longer), so that a run far above ``--max-events``
  is refused before it starts, and a sweep's size is reported before it runs.
* :func:`run_until` runs the SimPy loop with a cap on the work done (events plus map and
  unmap hypercalls) and stops with :class:`RunBudgetError` past it: the last resort
  for anything the estimate misjudged.

A "step below the clock's resolution" counts as zero: simulated time is a float of ns,
and at the longest duration (one hour) it cannot advance by less than about 0.0005 ns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import simpy

    from sim.model.scenario import Scenario

from sim.model.bounds import TIME_RESOLUTION_NS

#: The default of ``--max-events``: about 8 to 9 minutes of host time at bdw.yaml's rate
#: (a 1 s run: 74,000 events and maps in 0.8 s on the shared 2-core machine), and
#: about 2,900 times what bdw.yaml (200 ms) needs.
DEFAULT_MAX_EVENTS = 50_000_000
#: The largest ``--max-events`` accepted: a cap, however generous, stays a cap.
MAX_EVENTS_LIMIT = 10**12
#: SimPy events per turn of a vCPU's loop that traps, and per turn that does not (an
#: untracked page-table write: one timeout). Measured on the shipped scenarios
#: (tests/test_budget.py checks the estimate against counted events): about 2 to 2.5 on
#: a pCPU of its own (the think time, a device-model wake-up, a service or PPGTT burst
#: that something else interrupts), 3.5 when pCPUs or dom0 vCPUs are shared; rounded
#: up, so that the estimate errs above.
EVENTS_PER_TRAP = 3
EVENTS_PER_SHARED_TRAP = 5
UNTRACKED = "untracked page-table write"
#: How often (in events) run_until looks at the work done.
_CHUNK = 1 << 16


class RunBudgetError(RuntimeError):
    """A run did more work than its ``max_events`` allow; nothing is written."""


@dataclass(frozen=True)
class Step:
    """One thing a turn of a vCPU's loop waits for: a cost (ns) or a distribution."""

    keypath: str
    value: Any  # a float, or one of sim.model.dists' distributions
    always: bool = True  # False: only sometimes (a wake-up only when a thread was idle)


@dataclass(frozen=True)
class TrapPath:
    """One way a turn of one vCPU's loop can go, with the share of its turns that go
    this way (an upper bound where the model decides at run time, e.g. whether a page's
    map failed)."""

    name: str
    share: float
    steps: tuple[Step, ...]
    vcpu: int = 0  # the vCPU of the guest entry whose loop this is
    estimate: bool = True  # False: a rare path, left out of the estimate of a run's size
    kind: str = ""  # the service kind of the trap (ppgtt_write: an untracked turn may replace it)


#: A replayed vCPU's think time: the capture's gap to its next access.
REPLAYED = "replayed"


def _trap_kinds(g: Any) -> list[tuple[str, float, str, str, str]]:
    """(name, share, service kind, access type, server) of each kind of trap the guest
    makes: from ``devices`` (sim.model.devices) when it has them, else from ``mix``."""
    if g.devices is not None:
        from sim.model.devices import kind_of

        return [
            (
                f"devices[{j}]",
                d.share,
                kind_of(d.space, d.server),
                "pio" if d.space == "port" else "mmio",
                d.server,
            )
            for j, d in enumerate(g.devices)
        ]
    mix, other_mmio = g.mix, g.other_devices.mmio_fraction
    return [
        ("mmio", mix.mmio, "mmio", "mmio", "xengt"),
        ("pio", mix.pio, "pio", "pio", "xengt"),
        ("ppgtt_write", mix.ppgtt_write, "ppgtt_write", "mmio", "xengt"),
        ("other (MMIO)", mix.other * other_mmio, "other", "mmio", "qemu"),
        ("other (PIO)", mix.other * (1 - other_mmio), "other", "pio", "qemu"),
    ]


def trap_paths(scenario: Scenario, gi: int) -> list[TrapPath]:
    """Every way one turn of a vCPU loop of guest entry ``gi`` (sim.model.processes) can
    go, for each of its vCPUs.

    Extend this table when the model's trap path changes: a step missing here makes the
    zero-time check too strict, a step listed here that the model does not take makes it
    miss a livelock, which ``tests/test_budget.py`` would catch by running the model.
    Left out because they may cost nothing: the handler-table scan (``handler_check_ns``
    per handler checked, which may be none), the node walk and p2m lookups, a lock wait.
    """
    g = scenario.guests[gi]
    here = f"guests[{gi}]"
    c = scenario.costs

    def cost(*names: str) -> list[Step]:
        return [Step(f"costs.{n}", float(getattr(c, n))) for n in names]

    # HypervisorCpu: the exit, and on the reply the vCPU's wake-up, the completion's second
    # decode (hvm_do_resume) and the entry; an MMIO exit is an EPT violation first.
    exits = {
        "mmio": cost("vmexit_ns", "ept_violation_ns", "mmio_decode_ns"),
        "pio": cost("vmexit_ns", "pio_decode_ns"),
    }
    resumes = {
        "mmio": cost("vcpu_wake_ns", "mmio_decode_ns", "vmentry_ns"),
        "pio": cost("vcpu_wake_ns", "pio_decode_ns", "vmentry_ns"),
    }

    def served(server: str, kind: str, access: str) -> list[Step]:
        key = "vgpu.device_model" if server == "xengt" else "qemu"
        dm = g.vgpu.device_model if server == "xengt" else g.qemu
        which = kind if getattr(dm.service, kind) is not None else "default"
        return [
            *cost("ioreq_send_ns"),
            Step(f"{here}.{key}.wakeup", dm.wakeup, always=False),
            Step(f"{here}.{key}.service.{which}", dm.service.for_kind(kind)),
            *resumes[access],
        ]

    if g.replay is not None:
        thinks = [Step(f"{here}.replay", REPLAYED)] * g.vcpus
    elif g.vcpu_think is not None:
        thinks = [Step(f"{here}.vcpu_think[{i}]", d) for i, d in enumerate(g.vcpu_think)]
    else:
        thinks = [Step(f"{here}.think", g.think)] * g.vcpus
    untracked = _writes_may_go_untracked(scenario, gi)
    paths = []
    for v, think in enumerate(thinks):
        for name, share, kind, access, server in _trap_kinds(g):
            if share <= 0:
                continue
            steps = (think, *exits[access], *served(server, kind, access))
            paths.append(TrapPath(name, share, steps, v, kind=kind))
            if kind == "ppgtt_write" and untracked:
                # The page's map failed or no page table is live: the write does not trap.
                paths.append(TrapPath(UNTRACKED, share, (think,), v))
            # No ioreq at all: Xen's own emulators take some ports and pages (the PIT,
            # the PM timer: sim.xen.intercept), the null handler what no server claims,
            # and p2m-ioreq-server reads come from RAM. Rare: left out of the estimate.
            steps = (think, *exits[access], *cost("vmentry_ns"))
            paths.append(TrapPath(f"{name}, handled in Xen", share, steps, v, estimate=False))
    return paths


def _writes_may_go_untracked(scenario: Scenario, gi: int) -> bool:
    """Whether a page-table write can find its page unprotected (sim.xen.ioreq)."""
    pages = scenario.guests[gi].vgpu.ppgtt.live_pages
    x = scenario.xen
    if pages == 0:
        return True
    if x.design == "p2m-ioreq-server" or x.max_nr_io_ranges is None:
        return False
    # xen-4.6 keeps the pages next to the BAR in MEMORY; wp-split in a rangeset of their own.
    return pages + (1 if x.design == "xen-4.6" else 0) > x.max_nr_io_ranges


# -- distributions: can a step be zero, and its mean ------------------------------------
def _values(dist: Any, base_dir: Path) -> list[float]:
    from sim.model.dists import read_empirical

    return read_empirical(base_dir, dist, "(scenario)", "empirical")


def can_be_zero(value: Any, base_dir: Path) -> bool:
    """Whether a step takes less than the clock's resolution with positive probability
    as an atom (a constant, a uniform below it, a CSV value), not merely as a tail."""
    if isinstance(value, float):
        return value < TIME_RESOLUTION_NS
    if value == REPLAYED:
        # A captured gap is a real machine's time from an entry to the next exit: never
        # 0. (A hand-made capture that loops with 0 gaps is stopped by --max-events.)
        return False
    kind = value.dist
    if kind == "constant":
        return bool(value.value_ns < TIME_RESOLUTION_NS)
    if kind == "uniform":
        return bool(value.high_ns < TIME_RESOLUTION_NS)
    if kind == "empirical":
        return min(_values(value, base_dir)) < TIME_RESOLUTION_NS
    return False  # exponential, lognormal: no atom, and a mean of at least 1 ps


def mean_ns(value: Any, base_dir: Path) -> float:
    if isinstance(value, float):
        return value
    if value == REPLAYED:
        return 0.0  # unknown before the capture is read: the shortest, for an upper bound
    kind = value.dist
    if kind == "constant":
        return float(value.value_ns)
    if kind == "uniform":
        return (value.low_ns + value.high_ns) / 2
    if kind == "empirical":
        values = _values(value, base_dir)
        return sum(values) / len(values)
    return float(value.mean_ns)  # exponential, lognormal


def zero_time_cycles(scenario: Scenario, base_dir: Path) -> Iterator[tuple[str, str]]:
    """(key path, problem) for each guest whose vCPU loop can turn without simulated time
    passing: every step of one of its paths can be zero. Such a run would never end."""
    for gi, g in enumerate(scenario.guests):
        for path in trap_paths(scenario, gi):
            steps = [s for s in path.steps if s.always]
            if all(can_be_zero(s.value, base_dir) for s in steps):
                names = ", ".join(s.keypath for s in steps)
                yield (
                    steps[0].keypath,
                    f"guest {g.name}'s {path.name} trap cycle can take no simulated time, so "
                    f"the run would never end: give one of these a positive value: {names}",
                )
                break


# -- what a run will cost ---------------------------------------------------------------
@dataclass(frozen=True)
class RunEstimate:
    """An upper bound on a run's work, before it runs."""

    turns: float  # turns of the vCPU loops (trapping or not)
    events: float  # SimPy events
    hypercalls: float  # map and unmap hypercalls (PPGTT set-up and churn)

    @property
    def work(self) -> float:
        """What ``--max-events`` counts: events plus hypercalls."""
        return self.events + self.hypercalls

    def describe(self) -> str:
        return (
            f"~{self.work:,.0f} events ({self.turns:,.0f} vCPU turns, {self.hypercalls:,.0f} maps)"
        )


def estimate_run(scenario: Scenario, base_dir: Path) -> RunEstimate:
    """How much work a run of ``scenario`` takes, about (no queueing, which only makes
    turns longer; every page-table write that might go untracked does, since an
    untracked turn is the shortest)."""
    duration = scenario.duration_ms * 1e6  # ns
    n_vcpus = sum(g.vcpus * g.count for g in scenario.guests)
    shared = scenario.host.dom0_vcpus is not None or (
        scenario.host.pcpus is not None and scenario.host.pcpus < n_vcpus
    )
    per_trap = EVENTS_PER_SHARED_TRAP if shared else EVENTS_PER_TRAP
    turns = events = hypercalls = 0.0
    for gi, g in enumerate(scenario.guests):
        by_vcpu: dict[int, list[TrapPath]] = {}
        for p in trap_paths(scenario, gi):
            if p.estimate:
                by_vcpu.setdefault(p.vcpu, []).append(p)
        guest_turns = guest_events = 0.0
        for paths in by_vcpu.values():
            if any(p.name == UNTRACKED for p in paths):  # the shorter turn: the upper bound
                paths = [p for p in paths if p.kind != "ppgtt_write"]
            trapping = sum(p.share for p in paths if p.name != UNTRACKED)
            mean_turn = sum(p.share * _mean_steps(p, base_dir) for p in paths)
            vcpu_turns = duration / max(mean_turn, TIME_RESOLUTION_NS)
            if scenario.max_accesses is not None and trapping > 0:
                measured = 1 - scenario.warmup_ms / scenario.duration_ms
                vcpu_turns = min(vcpu_turns, scenario.max_accesses / (trapping * measured) + 1)
            guest_turns += vcpu_turns
            guest_events += vcpu_turns * (trapping * per_trap + (1 - trapping))
        ppgtt = g.vgpu.ppgtt
        guest_maps = float(ppgtt.live_pages)
        if ppgtt.lifetime_ms is not None and ppgtt.live_pages:
            lifetimes = scenario.duration_ms / ppgtt.lifetime_ms
            guest_events += -(-ppgtt.live_pages // ppgtt.pages_per_ppgtt) * lifetimes
            guest_maps += 2 * ppgtt.live_pages * lifetimes
        turns += g.count * guest_turns
        events += g.count * guest_events
        hypercalls += g.count * guest_maps
    return RunEstimate(turns, events, hypercalls)


def _mean_steps(path: TrapPath, base_dir: Path) -> float:
    return sum(mean_ns(s.value, base_dir) for s in path.steps if s.always)


# -- the run loop with a cap --------------------------------------------------------------
def run_until(
    env: simpy.Environment,
    stop: simpy.Event,
    max_events: int,
    extra_work: Callable[[], int],
    describe: Callable[[], str],
) -> int:
    """``env.run(until=stop)`` that stops with :class:`RunBudgetError` once the events
    processed plus ``extra_work()`` pass ``max_events`` (checked every 65,536 events).

    It processes exactly the events ``env.run`` would, in the same order (SimPy's own
    ``run`` is the same loop over ``env.step()``), so results do not change. The steps
    are unrolled by 8, so that counting costs next to nothing: callgrind counts 2.916e9
    instructions for a 300 ms bdw.yaml run against env.run's 2.914e9 (+0.07%), where one
    loop turn per step cost +0.5%. The number of events returned is exact to within 8.
    """
    from simpy.core import StopSimulation

    if stop.callbacks is None:  # already processed
        return 0
    stop.callbacks.append(StopSimulation.callback)
    step = env.step
    done, groups = 0, 0
    try:
        while True:
            for groups in range(_CHUNK // 8):  # noqa: B007 -- counts the last, partial chunk
                step()
                step()
                step()
                step()
                step()
                step()
                step()
                step()
            done, groups = done + _CHUNK, 0
            if done + extra_work() > max_events:
                raise RunBudgetError(
                    f"stopped after {done + extra_work():,} events and maps, above "
                    f"--max-events {max_events:,}, at {describe()}: shorten duration_ms, "
                    "set max_accesses or raise --max-events"
                )
    except StopSimulation:
        return done + 8 * groups + 8
