"""The model wired in one place: one scenario and seed -> guests, pCPUs, device models.

:class:`Simulation` builds every process of :mod:`sim.model.processes` for a validated
:class:`~sim.model.scenario.Scenario` and runs it; :class:`GuestRuntime` holds one guest
domain's ioreq state (:class:`sim.xen.ioreq.IoreqDomain`), its servers and its vCPUs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import simpy

from sim.inputs import InputError
from sim.model.devices import DeviceAccessGenerator
from sim.model.dists import EmpiricalDist, read_empirical
from sim.model.processes import (
    NS_PER_MS,
    DeviceModelServer,
    HypervisorCpu,
    PpgttLifecycle,
    Process,
    Vcpu,
)
from sim.model.recorder import RangeCountMeter, Recorder, RunResult, Trap
from sim.model.replay import CaptureAccesses, ReplayOpener, ReplayVcpu
from sim.model.scenario import Guest, Scenario
from sim.model.streams import make_sampler, stream
from sim.model.workload import AccessGenerator, LivePages
from sim.xen.abi import RangeType, parse_pci_slot
from sim.xen.ioreq import Access, Design, HypercallError, IoreqDomain


class Workload(Protocol):
    """Where a vCPU's next trapping access comes from (``Vcpu.run``)."""

    def next(self) -> tuple[str, Access | None]: ...


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
        self.device_models = {
            "qemu": DeviceModelServer(sim, self.name, qemu, config.qemu),
            "xengt": DeviceModelServer(sim, self.name, self.xengt, v.device_model),
        }
        self.live_pages = LivePages()
        self.meter = RangeCountMeter(sim.env, sim.warmup_ns)
        self.ppgtt = PpgttLifecycle(sim, self)
        self.meter.at_start = self.range_count()
        self.replay = self._open_replay() if config.replay is not None else None
        kind_rng, addr_rng = sim.rng(f"{self.name}/mix"), sim.rng(f"{self.name}/addr")
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
    """Builds the model for one scenario and seed, and runs it."""

    def __init__(
        self,
        scenario: Scenario,
        seed: int | None = None,
        base_dir: str | Path = ".",
        trace: Callable[[Trap], None] | None = None,
        replay_opener: ReplayOpener | None = None,
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
