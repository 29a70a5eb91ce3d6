"""The SimPy model: guest vCPUs trap, hypervisor pCPUs route, device models serve.

Three roles, each a SimPy process (time in ns):

``Vcpu``
    A closed loop, as in Xen: run guest code for a random think time, then trap. A
    synchronous ioreq blocks the vCPU until the device model replies, for reads and
    writes alike (``hvm_send_ioreq`` / ``hvm_wait_for_io``, hvm.c @4.6 lines 2710 and
    447; XenGT creates its server with ``handle_bufioreq = 0``, so nothing is buffered).
    One request is in flight per vCPU (the per-vCPU slot of ``shared_iopage_t``).
``HypervisorCpu``
    One per physical CPU, because Xen handles an exit on the pCPU that ran the vCPU.
    For an exit: VM exit, decode, server selection (visits x ``visit_ns``, the visits
    coming from ``sim.ioreq`` for the domain's design and rangeset), then the ioreq write
    and event-channel notify. For a reply: wake the vCPU, resume and VM entry. A pCPU
    works on one thing at a time, so vCPUs pinned to the same pCPU contend.
``DeviceModelWorker``
    ``workers`` threads per ioreq server (XenGT's, and QEMU as the default server). An
    idle thread pays a dom0 wake-up before it serves; dom0 vCPUs may be a pool shared by
    all device models of the host.

A fourth process per vGPU, ``PpgttLifecycle``, creates and destroys PPGTTs: the device
model write-protects each page-table page with a map hypercall and unprotects it on
destroy. When ``max_nr_io_ranges`` is spent the map fails as in Xen, the page keeps its
RAM type, and guest writes to it are not trapped: ``untracked_ppgtt_writes``.

Everything is wired in :class:`Simulation`, in one place.
"""

from __future__ import annotations

import time
from array import array
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import simpy

from sim.ioreq import Access, Design, IoreqDomain, IoreqServer, RangeType, parse_pci_slot
from sim.scenario import ACCESS_KINDS, DeviceModel, EmpiricalDist, Guest, Scenario, read_empirical
from sim.streams import make_sampler, stream
from sim.workload import AccessGenerator, FrameAllocator, LivePages

Process = Generator[simpy.Event, Any, None]
NS_PER_MS = 1_000_000


class Inbox:
    """A FIFO hand-off between processes that costs one event only when a taker waits.

    ``simpy.Store`` schedules an event for every put *and* every get; on this model's
    hot path that is a quarter of all events, so the queues use this lighter hand-off
    with the same FIFO semantics: items go straight to the longest-waiting taker.
    """

    __slots__ = ("_env", "_takers", "items")

    def __init__(self, env: simpy.Environment) -> None:
        self._env = env
        self.items: deque[Any] = deque()
        self._takers: deque[simpy.Event] = deque()

    def put(self, item: Any) -> None:
        if self._takers:
            self._takers.popleft().succeed(item)
        else:
            self.items.append(item)

    def wait(self) -> simpy.Event:
        """An event whose value is the next item; call only when ``items`` is empty."""
        ev = self._env.event()
        self._takers.append(ev)
        return ev


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
        now = self.env.now
        if now > self.start:
            self.area += self.value * (now - max(self.last_t, self.start))
        self.last_t = now
        self.value = value
        self.max = max(self.max, value)

    def mean(self, end: float) -> float:
        span = end - self.start
        if span <= 0:
            return float(self.value)
        return (self.area + self.value * (end - max(self.last_t, self.start))) / span


class DeviceModelServer:
    """The device model behind one ioreq server: an inbox and its worker threads."""

    def __init__(
        self,
        sim: Simulation,
        guest_name: str,
        server: IoreqServer,
        config: DeviceModel,
    ) -> None:
        self.sim = sim
        # The server column of the results, and the prefix of this model's stream names.
        self.label = f"{guest_name}/{server.name}"
        self.inbox = Inbox(sim.env)
        self.wakeup = sim.sampler(config.wakeup, f"{self.label}/wakeup")
        self.service = {
            kind: sim.sampler(config.service.for_kind(kind), f"{self.label}/service/{kind}")
            for kind in ACCESS_KINDS
        }
        for _ in range(config.workers):
            sim.env.process(self.worker())

    def worker(self) -> Process:
        env = self.sim.env
        inbox = self.inbox
        dom0 = self.sim.dom0
        wakeup, service = self.wakeup, self.service
        while True:
            if inbox.items:
                trap = inbox.items.popleft()
                delay = service[trap.kind]()
            else:
                # The thread went idle: the event-channel IRQ has to wake it.
                trap = yield inbox.wait()
                delay = wakeup() + service[trap.kind]()
            if dom0 is not None:
                with dom0.request() as req:
                    yield req
                    yield env.timeout(delay)
            else:
                yield env.timeout(delay)
            trap.t_served = env.now
            # Notify back on the vCPU's event channel: its pCPU resumes it.
            trap.vcpu.pcpu.reply(trap)


class HypervisorCpu:
    """Xen on one physical CPU: handles exits and resumes of the vCPUs pinned to it.

    A pCPU with one pinned vCPU (the default) is idle whenever that vCPU is blocked, so
    its resume work can never queue behind anything: a reply then resumes the vCPU at
    once, with ``t_resumed`` set ``wake + entry`` ahead, and the vCPU folds that delay
    into its next think time. Same event times, two SimPy events fewer per trap. A pCPU
    shared by several vCPUs queues replies behind exits, in FIFO order.
    """

    def __init__(self, sim: Simulation, index: int) -> None:
        self.sim = sim
        self.index = index
        self.inbox = Inbox(sim.env)
        self.dedicated = True  # set by Simulation once vCPUs are pinned
        c = sim.scenario.costs
        self.wake_resume_ns = c.vcpu_wake_ns + c.vmentry_ns
        sim.env.process(self.run())

    def reply(self, trap: Trap) -> None:
        """The device model's event-channel notification for ``trap``."""
        if self.dedicated:
            trap.t_resumed = self.sim.env.now + self.wake_resume_ns
            trap.done.succeed()
        else:
            self.inbox.put(trap)

    def _resume_after(self, trap: Trap, delay: float) -> Process:
        """Resume ``trap``'s vCPU after ``delay`` ns of work on this pCPU."""
        if self.dedicated:
            trap.t_resumed = self.sim.env.now + delay
            trap.done.succeed()
        else:
            yield self.sim.env.timeout(delay)
            trap.t_resumed = self.sim.env.now
            trap.done.succeed()

    def run(self) -> Process:
        env = self.sim.env
        c = self.sim.scenario.costs
        exit_mmio = c.vmexit_ns + c.mmio_decode_ns
        exit_pio = c.vmexit_ns + c.pio_decode_ns
        visit_ns, p2m_ns = c.visit_ns, c.p2m_lookup_ns
        send_ns, entry_ns = c.ioreq_send_ns, c.vmentry_ns
        wake_resume_ns = self.wake_resume_ns
        inbox = self.inbox
        counters = self.sim.recorder.counters
        while True:
            trap = inbox.items.popleft() if inbox.items else (yield inbox.wait())
            if trap.dm is not None:
                # Forwarded before, so this is the device model's reply (shared pCPU):
                # wake the vCPU, hvm_do_resume(), VM entry.
                yield from self._resume_after(trap, wake_resume_ns)
                continue
            # A VM exit. Selection reads the rangesets as of the exit (one event instead
            # of two; the state can only change by a hypercall in the same ~1.5 us).
            access = trap.access
            guest = trap.vcpu.guest
            handler, server, visits, p2m_lookups = guest.domain.route_fast(access)
            trap.visits = visits
            select_ns = visits * visit_ns + p2m_lookups * p2m_ns
            exit_ns = exit_mmio if access.kind == "mmio" else exit_pio
            trap.t_selected = env.now + exit_ns + select_ns
            dm = guest.device_models.get(handler) if server is not None else None
            if dm is None:
                # Null handler (reads ~0, writes dropped) or a p2m_ioreq_server read that
                # Xen emulates from RAM: no ioreq, the vCPU re-enters at once.
                trap.handler = f"{guest.name}/{handler}"
                counters.null_handled += handler == "none"
                trap.t_served = trap.t_selected
                yield from self._resume_after(trap, exit_ns + select_ns + entry_ns)
                continue
            trap.handler = dm.label
            trap.dm = dm
            # Copy the ioreq into the shared page and notify; the vCPU blocks in Xen.
            yield env.timeout(exit_ns + select_ns + send_ns)
            dm.inbox.put(trap)


class Vcpu:
    """A guest vCPU: think, trap, block until resumed, repeat."""

    def __init__(self, sim: Simulation, guest: GuestRuntime, index: int, pcpu: HypervisorCpu):
        self.sim = sim
        self.guest = guest
        self.index = index
        self.name = f"{guest.name}/vcpu{index}"
        self.pcpu = pcpu
        self.think = sim.sampler(guest.config.think, f"{self.name}/think")
        sim.env.process(self.run())

    def run(self) -> Process:
        env = self.sim.env
        think = self.think
        workload = self.guest.workload
        domain = self.guest.domain
        recorder = self.sim.recorder
        counters = recorder.counters
        pcpu_inbox = self.pcpu.inbox
        protected = domain.p2m  # gfn -> p2m type, for write-protected pages only
        resume_delay = 0.0  # a dedicated pCPU resumes us ahead of time; see HypervisorCpu
        while True:
            yield env.timeout(resume_delay + think())
            resume_delay = 0.0
            kind, access = workload.next()
            if access is None:
                continue  # no page table is live to write to
            if kind == "ppgtt_write" and (access.addr >> 12) not in protected:
                # The page's map failed (or was never made): the write does not trap.
                counters.untracked_ppgtt_writes += 1
                continue
            trap = Trap(self, kind, access, env.now, env.event())
            pcpu_inbox.put(trap)
            yield trap.done
            recorder.record(trap)
            resume_delay = trap.t_resumed - env.now


class PpgttLifecycle:
    """The vGPU's PPGTTs: write-protect their pages on create, unprotect on destroy.

    Each page is one map hypercall, as XenGT's ``hvm_wp_page_to_ioreq_server`` did. A
    PPGTT's hypercalls are applied together when it is created or destroyed; their
    modelled cost (``hypercall_ns`` + visits x ``visit_ns`` each) is accounted, not
    charged to a CPU.
    """

    def __init__(self, sim: Simulation, guest: GuestRuntime) -> None:
        self.sim = sim
        self.guest = guest
        cfg = guest.config.vgpu.ppgtt
        self.frames = FrameAllocator(
            guest.config.ram_mb * 256, cfg.contiguity, sim.rng(f"{guest.name}/frames")
        )
        n_ppgtts = -(-cfg.live_pages // cfg.pages_per_ppgtt) if cfg.live_pages else 0
        # Spread live_pages as evenly as possible over the PPGTTs.
        base, extra = divmod(cfg.live_pages, n_ppgtts) if n_ppgtts else (0, 0)
        self.sizes = [base + (1 if i < extra else 0) for i in range(n_ppgtts)]
        self.ppgtts: list[list[int]] = [[] for _ in self.sizes]
        costs = sim.scenario.costs
        self.visit_ns, self.hypercall_ns = costs.visit_ns, costs.hypercall_ns
        for slot in range(n_ppgtts):
            self.create(slot)
        if cfg.lifetime_ms is not None:
            for slot in range(n_ppgtts):
                sim.env.process(self.churn(slot, cfg.lifetime_ms * NS_PER_MS, n_ppgtts))

    def _hypercall(self, visits: int) -> None:
        """Account one map/unmap hypercall: its fixed cost plus its rangeset visits."""
        self.sim.recorder.counters.hypercall_ns += self.hypercall_ns + visits * self.visit_ns

    def create(self, slot: int) -> None:
        g = self.guest
        counters = self.sim.recorder.counters
        self.frames.restart_run()
        pages = []
        for _ in range(self.sizes[slot]):
            gfn = self.frames.allocate()
            pages.append(gfn)
            g.live_pages.add(gfn)
            counters.maps += 1
            rc, visits = g.domain.write_protect_rc(g.xengt, gfn, gfn)
            if rc is not None:
                counters.failed_maps += 1
                counters.failed_map_errnos[rc] = counters.failed_map_errnos.get(rc, 0) + 1
            counters.map_visits += visits
            self._hypercall(visits)
        self.ppgtts[slot] = pages
        g.meter.update(g.range_count())

    def destroy(self, slot: int) -> None:
        g = self.guest
        counters = self.sim.recorder.counters
        for gfn in self.ppgtts[slot]:
            g.live_pages.remove(gfn)
            if g.domain.is_write_protected(gfn):
                counters.unmaps += 1
                rc, visits = g.domain.unprotect_rc(g.xengt, gfn, gfn)
                if rc is not None:
                    counters.failed_unmaps += 1
                self._hypercall(visits)
            self.frames.release(gfn)
        self.ppgtts[slot] = []
        g.meter.update(g.range_count())

    def churn(self, slot: int, lifetime_ns: float, n_slots: int) -> Process:
        env = self.sim.env
        # Stagger the slots so that PPGTTs are not all replaced at the same instant.
        yield env.timeout(lifetime_ns * (slot + 1) / n_slots)
        while True:
            self.destroy(slot)
            self.create(slot)
            yield env.timeout(lifetime_ns)


class GuestRuntime:
    """One guest domain: its ioreq servers, device models, vCPUs and PPGTTs."""

    def __init__(self, sim: Simulation, config: Guest, first_pcpu: int) -> None:
        self.sim = sim
        self.config = config
        self.name = config.name
        x = sim.scenario.xen
        self.domain = IoreqDomain(
            design=Design(x.design),
            impl=x.rangeset,
            max_nr_io_ranges=x.max_nr_io_ranges,
            mmio_window=x.mmio_window,
        )
        # QEMU's default server exists first (created implicitly when QEMU reads
        # HVM_PARAM_IOREQ_PFN); XenGT's server is newer, so Xen tries it first.
        qemu = self.domain.create_server("qemu", default=True)
        self.xengt = self.domain.create_server("xengt")
        v = config.vgpu
        for rtype, (s, e) in (
            (RangeType.MEMORY, v.bar0_mmio),
            (RangeType.PORT, v.vga_ports),
        ):
            self.domain.map_io_range(self.xengt, rtype, s, e)
        sbdf = parse_pci_slot(v.pci).sbdf
        self.domain.map_io_range(self.xengt, RangeType.PCI, sbdf, sbdf)
        self.device_models = {
            "qemu": DeviceModelServer(sim, self.name, qemu, config.qemu),
            "xengt": DeviceModelServer(sim, self.name, self.xengt, v.device_model),
        }
        self.live_pages = LivePages()
        self.meter = RangeCountMeter(sim.env, sim.warmup_ns)
        self.ppgtt = PpgttLifecycle(sim, self)
        self.meter.at_start = self.range_count()
        self.workload = AccessGenerator(
            config, self.live_pages, sim.rng(f"{self.name}/mix"), sim.rng(f"{self.name}/addr")
        )
        self.vcpus = [
            Vcpu(sim, self, i, sim.pcpus[(first_pcpu + i) % len(sim.pcpus)])
            for i in range(config.vcpus)
        ]

    def range_count(self) -> int:
        return self.domain.range_count(self.xengt)


@dataclass
class RunResult:
    """What a run produced: grouped samples, counters and timings (plain records)."""

    groups: dict[tuple[str, str], tuple[array[float], array[int]]]
    counters: Counters
    sim_time_ns: float
    measured_ns: float
    wall_s: float
    ranges: dict[str, dict[str, float]]


class Simulation:
    """Builds the model for one scenario and seed, and runs it."""

    def __init__(
        self,
        scenario: Scenario,
        seed: int | None = None,
        base_dir: str | Path = ".",
        trace: Callable[[Trap], None] | None = None,
    ) -> None:
        self.scenario = scenario
        self.seed = scenario.seed if seed is None else seed
        self.base_dir = Path(base_dir)
        self.env = simpy.Environment()
        self.warmup_ns = scenario.warmup_ms * NS_PER_MS
        self.end_ns = scenario.duration_ms * NS_PER_MS
        self.stop = self.env.event()
        self.recorder = Recorder(self.warmup_ns, scenario.max_accesses, self.stop, trace)
        h = scenario.host
        n_vcpus = sum(g.vcpus for g in scenario.guests)
        self.dom0: simpy.Resource | None = (
            simpy.Resource(self.env, capacity=h.dom0_vcpus) if h.dom0_vcpus else None
        )
        self.pcpus = [HypervisorCpu(self, i) for i in range(h.pcpus or n_vcpus)]
        self.guests: list[GuestRuntime] = []
        first = 0
        for g in scenario.guests:
            self.guests.append(GuestRuntime(self, g, first))
            first += g.vcpus
        pinned = [0] * len(self.pcpus)
        for guest in self.guests:
            for vcpu in guest.vcpus:
                pinned[vcpu.pcpu.index] += 1
        for pcpu, count in zip(self.pcpus, pinned, strict=True):
            pcpu.dedicated = count <= 1

    def rng(self, name: str) -> Any:
        return stream(self.seed, name)

    def sampler(self, dist: Any, name: str) -> Callable[[], float]:
        values = None
        if isinstance(dist, EmpiricalDist):
            values = read_empirical(self.base_dir, dist, "(scenario)", name)
        return make_sampler(dist, self.rng(name), values)

    def _timer(self) -> Process:
        yield self.env.timeout(self.end_ns)
        if not self.stop.triggered:
            self.stop.succeed()

    def run(self, progress: Callable[[float, float], None] | None = None) -> RunResult:
        """Run to ``duration_ms`` (or ``max_accesses``). ``progress(now, end)`` is called
        from a low-rate SimPy process, never from the hot path."""
        env = self.env
        env.process(self._timer())
        if progress is not None:
            env.process(self._progress(progress))
        t0 = time.perf_counter()
        env.run(until=self.stop)
        wall = time.perf_counter() - t0
        end = env.now
        ranges = {
            g.name: {
                "at_start": g.meter.at_start,
                "mean": g.meter.mean(end),
                "max": g.meter.max,
                "final": g.range_count(),
            }
            for g in self.guests
        }
        return RunResult(
            groups=self.recorder.groups,
            counters=self.recorder.counters,
            sim_time_ns=end,
            measured_ns=max(0.0, end - self.warmup_ns),
            wall_s=wall,
            ranges=ranges,
        )

    def _progress(self, report: Callable[[float, float], None]) -> Process:
        # Adapt the simulated-time step so that reports land about twice a second.
        env = self.env
        step = self.end_ns / 1000
        last_wall = time.perf_counter()
        while True:
            yield env.timeout(step)
            now_wall = time.perf_counter()
            elapsed = max(now_wall - last_wall, 1e-6)
            step = min(max(step * 0.5 / elapsed, self.end_ns / 10_000), self.end_ns / 4)
            last_wall = now_wall
            report(env.now, self.end_ns)
