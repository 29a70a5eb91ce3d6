"""The SimPy processes: guest vCPUs trap, hypervisor pCPUs route, device models serve.

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
    coming from ``sim.xen.ioreq`` for the domain's design and rangeset), then the ioreq
    write and event-channel notify. For a reply: wake the vCPU, resume and VM entry. A
    pCPU works on one thing at a time, so vCPUs pinned to the same pCPU contend.
``DeviceModelWorker``
    ``workers`` threads per ioreq server (XenGT's, and QEMU as the default server). An
    idle thread pays a dom0 wake-up before it serves; dom0 vCPUs may be a pool shared by
    all device models of the host.

A fourth process per vGPU, ``PpgttLifecycle``, creates and destroys PPGTTs: the device
model write-protects each page-table page with a map hypercall and unprotects it on
destroy. When ``max_nr_io_ranges`` is spent the map fails as in Xen, the page keeps its
RAM type, and guest writes to it are not trapped: ``untracked_ppgtt_writes``.

They are wired together in :class:`sim.model.simulation.Simulation`, in one place.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import simpy

from sim.model.recorder import Trap
from sim.model.scenario import ACCESS_KINDS, DeviceModel
from sim.model.workload import FrameAllocator
from sim.xen.ioreq import IoreqServer

if TYPE_CHECKING:
    from sim.model.simulation import GuestRuntime, Simulation

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
            handler, server, visits, p2m_lookups, _emulators = guest.domain.route_fast(access)
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
        self.think, self.workload = guest.vcpu_source(index, self.name)
        sim.env.process(self.run())

    def run(self) -> Process:
        env = self.sim.env
        think = self.think
        workload = self.workload
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
