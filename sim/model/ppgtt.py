"""A vGPU's PPGTTs: write-protected on creation, unprotected on destruction, by dom0.

XenGT write-protects every page-table page of a shadowed PPGTT with one map hypercall
(``hvm_map_io_range_to_ioreq_server``) and one ``HVMOP_set_mem_type``
(``hvm_wp_page_to_ioreq_server``, intel/XenGT-Preview-kernel 1728045fed,
``drivers/xen/xengt.c``), from the shadowing code of its device model: the vGPU's
emulation thread, in dom0. A PPGTT's creation is therefore a burst of hundreds of
hypercalls on a dom0 vCPU, one after another, and each map holds the rangeset's write
lock for the two ``find_range`` walks of ``rangeset_add_range`` (after the overlap check
under the read lock; ``hvm_map_io_range_to_ioreq_server``, hvm.c @4.6, lines 1273-1277;
an unmap likewise checks under the read lock and removes under the write lock). Traps
of that guest that look the rangeset up meanwhile wait (:mod:`sim.model.locks`).

A replacement (destroy the old PPGTT, create a new one) falls due every ``lifetime_ms``
per PPGTT; the guest's next register write to the vGPU (a context submission) triggers
it, and XenGT's thread runs its hypercalls, one SimPy timeout each, before it completes
that write: the write's latency includes the burst, and the thread serves nobody else
meanwhile. PPGTTs live at the start were built before the measured window opens and
cost nothing. When ``max_nr_io_ranges`` is spent a map fails with ``-ENOMEM`` as in
Xen, the page keeps its RAM type, and guest writes to it are not trapped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from sim.model.processes import NS_PER_MS, Process
from sim.model.workload import FrameAllocator

if TYPE_CHECKING:
    from sim.model.processes import DeviceModelThread
    from sim.model.simulation import GuestRuntime, Simulation

#: Refusals found by the read-locked check alone (no write lock is taken).
READ_ONLY_REFUSALS = frozenset({"EEXIST", "ENOENT", "EINVAL", "EBUSY"})
#: find_range walks of a map or unmap: the check (read lock), then add/remove's two.
WALKS = 3


class PpgttJob:
    """Replace one PPGTT: unmap its pages, then map a new one's (a dom0 burst)."""

    def __init__(self, lifecycle: PpgttLifecycle, slot: int) -> None:
        self.lifecycle = lifecycle
        self.slot = slot
        self.done = lifecycle.sim.env.event()

    def run(self, thread: DeviceModelThread) -> Process:
        env = self.lifecycle.sim.env
        queue = env._queue  # type: ignore[attr-defined]  # SimPy's heap, as processes.py reads it
        busy = thread.busy
        window_start = busy.window_start
        pool = thread.pool
        for hypercall, arg in self.lifecycle.replace_steps(self.slot):
            start = env._now  # SimPy's clock, read directly (see processes.py)
            delay = hypercall(arg)
            end = start + delay  # what SimPy makes of a timeout of ``delay`` issued now
            if pool is None and (not queue or end < queue[0][0]) and thread.reply_at != start:
                env._now = end  # run ahead ("Running ahead" in processes.py)
            else:
                yield thread.waits_on(env.timeout(delay))
            if start >= window_start:
                busy.busy_ns += end - start  # Busy.add, inlined for a span in the window
            else:
                busy.add(start, end)
            if pool is not None:
                # Back from a hypercall: where dom0's kernel may switch to another thread.
                yield from thread.boundary()
        self.done.succeed()


class PpgttLifecycle:
    """The vGPU's PPGTTs and the hypercalls that protect their pages."""

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
        self.hypercall_ns = sim.scenario.costs.hypercall_ns
        self.env = sim.env
        self.counters = sim.recorder.counters
        self.visit_cost = sim.visit_cost
        self._walks_ns = sim.visit_cost.walks_pricer(WALKS)
        # One page per hypercall, for XenGT's server throughout: the core's flattened
        # single-page path (sim.xen.memtypes.PageProtector).
        protector = guest.domain.page_protector(guest.xengt)
        self._protect, self._unprotect = protector.protect, protector.unprotect
        for slot in range(n_ppgtts):
            self.frames.restart_run()
            for _ in range(self.sizes[slot]):
                self.map_page(slot, costed=False)
        guest.meter.update(guest.range_count())
        if cfg.lifetime_ms is not None:
            for slot in range(n_ppgtts):
                sim.env.process(self.churn(slot, cfg.lifetime_ms * NS_PER_MS, n_ppgtts))

    # -- one hypercall each ----------------------------------------------------------
    def _duration(self, rc: str | None, visits: int, nodes: int) -> float:
        """Host time of one map/unmap hypercall issued now, its lock wait included.

        The check walks under the read lock (only this thread writes the rangeset, so it
        never waits); add/remove walk twice under the write lock, after the readers
        already inside have left.
        """
        if visits == 0 or self.guest.page_rangeset is None:
            return self.hypercall_ns
        cost = self.visit_cost
        if rc in READ_ONLY_REFUSALS:
            return self.hypercall_ns + cost.walk_ns(visits, nodes)
        walks = self._walks_ns(visits, nodes)
        read_ns = walks / WALKS
        write_ns = walks - read_ns
        now = self.env._now  # SimPy's clock, read directly (see processes.py)
        t_write = now + self.hypercall_ns + read_ns
        start = self.guest.page_lock.write(t_write, write_ns)
        return start + write_ns - now

    def map_page(self, slot: int, costed: bool = True) -> float:
        g = self.guest
        counters = self.counters
        gfn = self.frames.allocate()
        self.ppgtts[slot].append(gfn)
        g.live_pages.add(gfn)
        rc, visits, nodes, nodes_after = self._protect(gfn)
        counters.maps += 1
        if rc is not None:
            counters.failed_maps += 1
            counters.failed_map_errnos[rc] = counters.failed_map_errnos.get(rc, 0) + 1
        counters.map_visits += visits
        if not costed:
            return 0.0
        duration = self._duration(rc, visits, nodes)
        counters.hypercall_ns += duration
        # The XenGT server's node count (the meter's value) changes only through the
        # page rangeset during a run: follow that change rather than sum every set.
        meter = g.meter
        meter.update(meter.value + nodes_after - nodes)
        return duration

    def unmap_page(self, gfn: int) -> float:
        """Unmap a write-protected page (its map succeeded) and free its frame."""
        g = self.guest
        g.live_pages.remove(gfn)
        counters = self.counters
        counters.unmaps += 1
        rc, visits, nodes, nodes_after = self._unprotect(gfn)
        if rc is not None:
            counters.failed_unmaps += 1
        duration = self._duration(rc, visits, nodes)
        counters.hypercall_ns += duration
        meter = g.meter
        meter.update(meter.value + nodes_after - nodes)
        self.frames.release(gfn)
        return duration

    def drop_page(self, gfn: int) -> None:
        """Free the frame of a page whose map failed: there is nothing to unmap."""
        self.guest.live_pages.remove(gfn)
        self.frames.release(gfn)

    # -- a replacement, step by step ---------------------------------------------------
    def replace_steps(self, slot: int) -> Iterator[tuple[Callable[[int], float], int]]:
        """One ``(hypercall, argument)`` per hypercall: ``hypercall(argument)`` applies it
        when called and returns its duration. A page whose map failed is dropped between
        hypercalls, with no hypercall of its own."""
        old, self.ppgtts[slot] = self.ppgtts[slot], []
        unmap, map_ = self.unmap_page, self.map_page
        protected = self.guest.domain.p2m  # gfn -> p2m type, for write-protected pages
        for gfn in old:
            if gfn in protected:
                yield unmap, gfn
            else:
                self.drop_page(gfn)
        self.frames.restart_run()
        for _ in range(self.sizes[slot]):
            yield map_, slot

    def churn(self, slot: int, lifetime_ns: float, n_slots: int) -> Process:
        env = self.sim.env
        # Stagger the slots so that PPGTTs are not all replaced at the same instant.
        yield env.timeout(lifetime_ns * (slot + 1) / n_slots)
        dm = self.guest.device_models["xengt"]
        while True:
            job = PpgttJob(self, slot)
            dm.put_job(job)
            yield job.done
            yield env.timeout(lifetime_ns)
