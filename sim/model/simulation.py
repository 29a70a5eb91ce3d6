"""The model wired in one place: one scenario and seed -> guests, CPUs, device models.

:class:`Simulation` builds every process of :mod:`sim.model.processes` for a validated
:class:`~sim.model.scenario.Scenario` and runs it; :class:`GuestRuntime` holds one guest
domain's ioreq state (:class:`sim.xen.ioreq.IoreqDomain`), its servers and its vCPUs. A
guest entry with ``count: N`` becomes N domains named ``<name>-1`` .. ``<name>-N``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import simpy

from sim.inputs import InputError
from sim.model.budget import DEFAULT_MAX_EVENTS, run_until
from sim.model.cache import VisitCost
from sim.model.cpu import Busy, Cpu, CpuPool
from sim.model.devices import DeviceAccessGenerator
from sim.model.dists import EmpiricalDist, read_empirical
from sim.model.locks import RwLockTimeline
from sim.model.ppgtt import PpgttLifecycle
from sim.model.processes import (
    NS_PER_MS,
    DeviceModelServer,
    DeviceModelThread,
    HypervisorCpu,
    Process,
    Vcpu,
)
from sim.model.recorder import RangeCountMeter, Recorder, RunResult, Trap, Usage
from sim.model.replay import CaptureAccesses, ReplayOpener, ReplayVcpu
from sim.model.scenario import Guest, Scenario, guest_instances
from sim.model.streams import make_sampler, stream
from sim.model.workload import AccessGenerator, LivePages
from sim.xen.abi import PAGE_SHIFT, RangeType, parse_pci_slot
from sim.xen.ioreq import Access, Design, HypercallError, IoreqDomain
from sim.xen.rangeset import Rangeset


class Workload(Protocol):
    """Where a vCPU's next trapping access comes from (``Vcpu.run``)."""

    def next(self) -> tuple[str, Access | None]: ...


class GuestRuntime:
    """One guest domain: its ioreq servers, device models, vCPUs and PPGTTs."""

    def __init__(self, sim: Simulation, config: Guest, name: str, first_pcpu: int) -> None:
        self.sim = sim
        self.config = config
        self.name = name
        x = sim.scenario.xen
        self.design = Design(x.design)
        self.domain = IoreqDomain(
            design=self.design,
            impl=x.rangeset,
            max_nr_io_ranges=x.max_nr_io_ranges,
            version=x.version,
        )
        # QEMU's server exists first; XenGT's is newer, so Xen tries it first. Until 4.11
        # QEMU's is the default server (created when QEMU reads HVM_PARAM_IOREQ_PFN) and
        # gets whatever XenGT does not claim. From 4.12 there is none (2c257bd69a): QEMU
        # registers a server of its own and maps the devices it emulates.
        has_default = self.domain.profile.default_server
        qemu = self.domain.create_server("qemu", default=has_default)
        if not has_default:
            other = config.other_devices
            self.domain.map_io_range(qemu, RangeType.MEMORY, *other.mmio)
            self.domain.map_io_range(qemu, RangeType.PORT, *other.ports)
        self.xengt = self.domain.create_server("xengt")
        v = config.vgpu
        for rtype, s, e in xengt_ranges(config):
            try:
                self.domain.map_io_range(self.xengt, rtype, s, e)
            except HypercallError as exc:
                raise InputError(
                    "(scenario)", f"guest {self.name}", f"XenGT cannot claim its ranges: {exc}"
                ) from None
        sbdf = parse_pci_slot(v.pci).sbdf
        self.domain.map_io_range(self.xengt, RangeType.PCI, sbdf, sbdf)
        sets = self.xengt.rangesets
        self.memory_rangeset = sets[RangeType.MEMORY]
        self.port_rangeset = sets[RangeType.PORT]
        # The rangeset the PPGTT maps write, and its lock; none under p2m-ioreq-server.
        self.page_rangeset: Rangeset | None = {
            Design.XEN_46: sets[RangeType.MEMORY],
            Design.WP_SPLIT: sets.get(RangeType.WP_MEM),
            Design.P2M_IOREQ_SERVER: None,
        }[self.design]
        self.page_lock = RwLockTimeline()
        # Under Xen 4.6 every MMIO lookup reads MEMORY (bound once for the hot path).
        self.page_in_memory = self.design is Design.XEN_46
        self.device_models = {
            "qemu": DeviceModelServer(sim, name, "qemu", config.qemu),
            "xengt": DeviceModelServer(sim, name, "xengt", v.device_model),
        }
        self.live_pages = LivePages()
        self.meter = RangeCountMeter(sim.env, sim.warmup_ns)
        self.ppgtt = PpgttLifecycle(sim, self)
        self.meter.at_start = self.range_count()
        self.replay = self._open_replay() if config.replay is not None else None
        kind_rng, addr_rng = sim.rng(f"{name}/mix"), sim.rng(f"{name}/addr")
        self.workload: Workload = (
            DeviceAccessGenerator(config.devices, self.live_pages.gfns, kind_rng, addr_rng)
            if config.devices is not None
            else AccessGenerator(config, self.live_pages, kind_rng, addr_rng)
        )
        self.vcpus = [
            Vcpu(sim, self, i, sim.pcpus[(first_pcpu + i) % len(sim.pcpus)])
            for i in range(config.vcpus)
        ]

    def range_count(self) -> int:
        return self.domain.range_count(self.xengt)

    def _open_replay(self) -> CaptureAccesses:
        replay = self.config.replay
        assert replay is not None
        opener = self.sim.replay_opener
        if opener is None:
            raise InputError(
                "(scenario)",
                f"guest {self.name}: replay",
                "replaying a capture needs a capture reader (sim.trace.replay.open_capture); "
                "'vgpu-sim run' passes it",
            )
        path = self.sim.base_dir / replay.capture
        return opener(path, replay.domain, self.sim.scenario.host.tsc_hz)

    def vcpu_source(self, index: int, name: str) -> tuple[Callable[[], float], Workload]:
        """Vcpu ``index``'s think-time sampler and workload: the guest's synthetic ones,
        or its own stream of a replayed capture."""
        g = self.config
        if self.replay is not None and g.replay is not None:
            source = ReplayVcpu(
                self.replay.vcpu(index),
                loop=g.replay.at_end == "loop",
                xengt_ports=(g.vgpu.vga_ports[0], g.vgpu.vga_ports[1]),
                xengt_mmio=(g.vgpu.bar0_mmio[0], g.vgpu.bar0_mmio[1]),
                live_gfns=self.live_pages.gfns,
            )
            return source.think, source
        think = g.vcpu_think[index] if g.vcpu_think is not None else g.think
        return self.sim.sampler(think, f"{name}/think"), self.workload

    def lookup_rangeset(self, access: Access) -> Rangeset | None:
        """The XenGT rangeset an access's selection reads, whose lock it takes.

        As ``hvm_select_ioreq_server()`` (hvm.c @4.6, lines 2519-2605) picks it: PORT
        for port I/O (the model's workload never sends a CF8/CFC config cycle), MEMORY
        for MMIO; under wp-split a write-protected page's WP_MEM (f5a32c5b8e); under
        p2m-ioreq-server such a page is routed by its p2m type, with no lookup.
        """
        if access.kind == "pio":
            return self.port_rangeset
        if self.page_in_memory:
            return self.memory_rangeset
        if (access.addr >> PAGE_SHIFT) in self.domain.p2m:
            return self.page_rangeset
        return self.memory_rangeset


def xengt_ranges(guest: Guest) -> list[tuple[RangeType, int, int]]:
    """The port and MMIO ranges XenGT's server claims for a guest: its vGPU's BAR0 and
    VGA ports, or, when the guest names its devices, the ranges of the xengt ones."""
    if guest.devices is None:
        v = guest.vgpu
        return [(RangeType.MEMORY, *v.bar0_mmio), (RangeType.PORT, *v.vga_ports)]
    return [
        (RangeType.PORT if d.space == "port" else RangeType.MEMORY, s, e)
        for d in guest.devices
        if d.server == "xengt" and d.space != "page_tables"
        for s, e in d.ranges
    ]


class Simulation:
    """Builds the model for one scenario and seed, and runs it.

    ``fast_path=False`` puts even a pCPU with one vCPU under a scheduler, and every
    device-model thread on a dom0 vCPU of its own under one: the tests check that this
    changes no event time, only the number of SimPy events.
    """

    def __init__(
        self,
        scenario: Scenario,
        seed: int | None = None,
        base_dir: str | Path = ".",
        trace: Callable[[Trap], None] | None = None,
        replay_opener: ReplayOpener | None = None,
        fast_path: bool = True,
    ) -> None:
        self.scenario = scenario
        self.replay_opener = replay_opener
        self.seed = scenario.seed if seed is None else seed
        self.base_dir = Path(base_dir)
        self.env = simpy.Environment()
        self.warmup_ns = scenario.warmup_ms * NS_PER_MS
        self.end_ns = scenario.duration_ms * NS_PER_MS
        self.stop = self.env.event()
        self.recorder = Recorder(self.warmup_ns, scenario.max_accesses, self.stop, trace)
        self.visit_cost = VisitCost(
            scenario.host.cpu, scenario.xen.rangeset, scenario.costs.visit_ns
        )
        h = scenario.host
        instances = guest_instances(scenario)
        n_vcpus = sum(g.vcpus for g, _ in instances)
        sched = h.scheduler
        self.dm_threads: list[DeviceModelThread] = []
        self.dom0: CpuPool | None = None
        self.dom0_cpus: list[Cpu] = []
        if h.dom0_vcpus:
            self.dom0_cpus = [Cpu(f"dom0/vcpu{i}", self.warmup_ns) for i in range(h.dom0_vcpus)]
            self.dom0 = CpuPool(self.env, self.dom0_cpus, sched, self.warmup_ns)
        self._private_dom0 = not fast_path and not h.dom0_vcpus
        self.pcpus = [HypervisorCpu(self, i) for i in range(h.pcpus or n_vcpus)]
        pinned = [0] * len(self.pcpus)
        first = 0
        for g, _ in instances:
            for i in range(g.vcpus):
                pinned[(first + i) % len(self.pcpus)] += 1
            first += g.vcpus
        self.pcpu_cpus: list[Cpu] = []
        for pcpu, count in zip(self.pcpus, pinned, strict=True):
            if count > 1 or not fast_path:
                cpu = Cpu(f"pcpu{pcpu.index}", self.warmup_ns)
                self.pcpu_cpus.append(cpu)
                pcpu.pool = CpuPool(self.env, [cpu], sched, self.warmup_ns)
        self.guests: list[GuestRuntime] = []
        first = 0
        for g, name in instances:
            self.guests.append(GuestRuntime(self, g, name, first))
            first += g.vcpus

    def new_busy(self) -> Busy:
        return Busy(self.warmup_ns)

    def dom0_pool_for(self, thread: DeviceModelThread) -> CpuPool | None:
        """The dom0 vCPUs a thread runs on: the shared pool, or (``fast_path=False``
        only) a one-vCPU pool of its own, which behaves like no pool at all."""
        if self._private_dom0:
            return CpuPool(
                self.env,
                [Cpu(f"dom0/{thread.name}", self.warmup_ns)],
                self.scenario.host.scheduler,
                self.warmup_ns,
            )
        return self.dom0

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

    def run(
        self,
        progress: Callable[[float, float], None] | None = None,
        max_events: int = DEFAULT_MAX_EVENTS,
    ) -> RunResult:
        """Run to ``duration_ms`` (or ``max_accesses``). ``progress(now, end)`` is called
        from a low-rate SimPy process, never from the hot path. Past ``max_events``
        (events plus map/unmap hypercalls) the run stops with
        :class:`sim.model.budget.RunBudgetError`."""
        env = self.env
        env.process(self._timer())
        if progress is not None:
            env.process(self._progress(progress))
        t0 = time.perf_counter()
        c = self.recorder.counters
        self.events = run_until(
            env,
            self.stop,
            max_events,
            lambda: c.maps + c.unmaps,
            lambda: f"{env.now / NS_PER_MS:.6g} ms of {self.end_ns / NS_PER_MS:.6g} ms simulated",
        )
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
            usage=self._usage(end),
        )

    def _usage(self, end: float) -> Usage:
        """Busy time of every CPU and thread, and the rangeset locks' waits."""
        threads = [(t.name, t.busy.total(end), t.served) for t in self.dm_threads]
        locks = {}
        for g in self.guests:
            lock = g.page_lock
            locks[g.name] = {
                "reader_waits": lock.readers_waited,
                "reader_wait_ns": lock.reader_wait_ns,
                "writer_wait_ns": lock.writer_wait_ns,
            }
        return Usage(
            dom0_vcpus=[(c.name, c.busy.total(end)) for c in self.dom0_cpus],
            threads=threads,
            pcpus=[(c.name, c.busy.total(end)) for c in self.pcpu_cpus],
            locks=locks,
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
