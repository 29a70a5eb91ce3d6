"""The SimPy processes: guest vCPUs trap, hypervisor pCPUs route, device models serve.

Three roles, each a SimPy process (time in ns):

``Vcpu``
    A closed loop, as in Xen: run guest code for a random think time, then trap. A
    synchronous ioreq blocks the vCPU until the device model replies, for reads and
    writes alike (``hvm_send_ioreq`` / ``hvm_wait_for_io``, hvm.c @4.6 lines 2710 and
    447; XenGT creates its server with ``handle_bufioreq = 0``, so nothing is buffered).
    One request is in flight per vCPU (the per-vCPU slot of ``shared_iopage_t``).
``HypervisorCpu``
    One per physical CPU, because Xen handles an exit on the pCPU that ran the vCPU:
    VM exit, the EPT-violation path for MMIO, instruction decode, Xen's scan of its
    internal I/O handlers, server selection (its node visits priced by
    :mod:`sim.model.cache`, waiting while a map or unmap holds the rangeset's write lock,
    :mod:`sim.model.locks`), then the ioreq write and event-channel notify. On the
    reply the vCPU wakes, ``hvm_do_resume`` completes the access by emulating it a
    second time, and the VM entry follows (see :class:`HypervisorCpu`).
``DeviceModelThread``
    ``workers`` threads per ioreq server (XenGT's, and QEMU's for the other devices). A
    sleeping thread pays a dom0 wake-up; it serves pending requests in its server's
    order (XenGT: vCPU index, as ``vgt_emulation_thread`` sweeps its pending bitmap;
    QEMU: arrival) on a dom0 vCPU, its own or one of a shared pool. XenGT's thread also
    runs the vGPU's PPGTT map/unmap bursts (:mod:`sim.model.ppgtt`), as part of the
    register write that needs the new PPGTT.

A pCPU shared by several vCPUs (``host.pcpus``) runs one at a time, guest code and
Xen's work alike, under the credit-like scheduler of :mod:`sim.model.cpu`; dom0's vCPUs
likewise run one thread at a time. Work a vCPU does while it holds its pCPU (the resume,
an exit Xen handles itself) is folded into its next run of guest code, so a trap costs
the same SimPy events on a free shared pCPU as on a pCPU of its own; waiting for a busy
CPU costs one event. A pCPU with one vCPU (the default) skips the scheduler's
bookkeeping altogether (the fast path: same event times, no preemption checks).

They are wired together in :class:`sim.model.simulation.Simulation`, in one place.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator
from heapq import heappush
from typing import TYPE_CHECKING, Any

import simpy
from simpy.core import Infinity  # what peek() returns when nothing is scheduled
from simpy.events import NORMAL

from sim.model.cpu import CpuPool, Runner
from sim.model.device_models import DeviceModel
from sim.model.recorder import Trap
from sim.model.scenario import ACCESS_KINDS

if TYPE_CHECKING:
    from sim.model.ppgtt import PpgttJob
    from sim.model.simulation import GuestRuntime, Simulation

Process = Generator[simpy.Event, Any, None]
NS_PER_MS = 1_000_000

#: Scans of Xen's internal I/O handler table per exit. ``hvm_find_io_handler()`` walks
#: every registered entry until one accepts (intercept.c @RELEASE-4.6.0, lines 205-227);
#: :mod:`sim.xen.intercept` registers them per release and ``route_fast`` reports how many
#: ``hvm_io_intercept()`` walked (19 in a 4.6 HVM domain when none accepts: the dpci
#: port, vpic x4, vioapic, stdvga x3, rtc, msixtbl, ports 0xe9 and 0xcf8, PIT x2, vlapic,
#: pmtimer x2, hpet; NR_IO_HANDLERS is 32). An EPT violation (MMIO, a write to a
#: protected page) walks the table twice: first in ``hvm_mmio_internal()`` on the NPF path
#: (hvm.c @4.6 line 2932; still there at @RELEASE-4.12.0 line 1740 and @master line 1869),
#: for the same first byte, then in ``hvm_io_intercept()`` from ``hvmemul_do_io()``
#: (emulate.c @4.6, line 161); port I/O only in the latter. Completion does not scan: the
#: re-issued request finds STATE_IORESP_READY and jumps to ``finish_access`` (emulate.c
#: @4.6, lines 130-146).
SCANS = {"mmio": 2, "pio": 1}


class Wake(simpy.Event):
    """An event fired by someone else after a delay: a thread's wake-up, a request's send.

    One event, like the ``Timeout`` it replaces, but whoever waits on it learns only when
    it fires what to do: ``fire_in`` does what ``simpy.Timeout``'s constructor does (mark
    the event ok with ``value`` and schedule it ``delay`` ahead).
    """

    def fire_in(self, delay: float, value: Any = None) -> None:
        self._ok = True
        self._value = value
        self.env.schedule(self, NORMAL, delay)

    def fire_at(self, when: float) -> None:
        """Fire at the instant ``when`` (not before now), exactly: what ``fire_in``
        would schedule if called at ``when`` (SimPy's own ``schedule``, minus its
        ``now + delay``, whose rounding would differ from a time computed ahead)."""
        env = self.env
        self._ok = True
        self._value = None
        heappush(env._queue, (when, NORMAL, next(env._eid), self))  # type: ignore[attr-defined]


# Reading SimPy's clock and heap. The hot paths below read SimPy 4's clock (``env._now``)
# and event heap (``env._queue``, whose top is the next event due) directly: the ``now``
# property and ``peek()`` are a Python call each, about ten per trap. (pyproject.toml
# pins simpy < 5 for this.)

# Saving zero-delay events. SimPy processes the events due at one instant in the order
# they were scheduled, so when nothing else is due now (``env.peek() > now``), a
# zero-delay event scheduled now would be the very next one: nothing could happen
# between now and it. The work it would wake a process for (Xen taking a trap from its
# vCPU, a vCPU taking the device model's reply) is then done at once, in the same
# order, and the event saved. When another event is due now, it keeps its turn: the
# zero-delay event is scheduled as before.

# Running ahead. A device-model thread that is about to wait ``end - start`` (a service,
# a hypercall) would issue a timeout that is the next event when nothing else is due
# before ``end``: it would resume at ``end`` with nothing having happened in between.
# It moves SimPy's clock there instead (same times, same order, one event fewer: a
# burst of hundreds of hypercalls costs a few events, a short service none). Only with
# a dom0 vCPU of its own (no scheduler to consult) and only while no vCPU waits to run
# after the thread's turn (``reply_at``): the thread runs now, woken by an event nobody
# else waits on but that vCPU. The test, spelled out where a thread waits
# (``DeviceModelThread.run``, ``PpgttJob.run``), is
#     pool is None and (not queue or end < queue[0][0]) and thread.reply_at != start


class DeviceModelServer:
    """The device model behind one ioreq server: its pending work and its threads."""

    def __init__(
        self, sim: Simulation, guest_name: str, server_name: str, config: DeviceModel
    ) -> None:
        self.sim = sim
        # The server column of the results, and the prefix of this model's stream names.
        self.label = f"{guest_name}/{server_name}"
        self.by_index = config.order == "vcpu-index"
        self.fifo: deque[Trap] = deque()
        self.pending: dict[int, Trap] = {}  # vCPU index -> its request (vcpu-index order)
        self.cursor = -1  # the vCPU index served last in the current sweep
        self.jobs: deque[PpgttJob] = deque()  # PPGTT replacements due (XenGT)
        self.sleeping: deque[DeviceModelThread] = deque()
        self.wakeup = sim.sampler(config.wakeup, f"{self.label}/wakeup")
        self.service = {
            kind: sim.sampler(config.service.for_kind(kind), f"{self.label}/service/{kind}")
            for kind in ACCESS_KINDS
        }
        self.threads = [DeviceModelThread(self, i) for i in range(config.workers)]

    def put(self, trap: Trap, at: float | None = None) -> None:
        """An ioreq arrives (the event channel to dom0 was notified), now or, when the
        caller knows that nothing happens before then, at the instant ``at``."""
        if self.by_index:
            self.pending[trap.vcpu.index] = trap
        else:
            self.fifo.append(trap)
        if self.sleeping:
            wake = self.sleeping.popleft().wake
            if at is None:
                wake.fire_in(self.wakeup())
            else:
                wake.fire_at(at + self.wakeup())

    def put_job(self, job: PpgttJob) -> None:
        """A PPGTT replacement is due; the guest's next register write triggers it."""
        self.jobs.append(job)

    def take(self) -> Trap:
        """The next request, in the server's order.

        XenGT's ``vgt_emulation_thread`` (intel/XenGT-Preview-kernel 1728045fed,
        ``drivers/xen/xengt.c``) sweeps its pending bitmap from vCPU 0 upwards, serving
        each set bit; a bit set behind the sweep waits for the next sweep, which starts
        again from vCPU 0 (``wait_event`` returns at once while bits are pending).
        """
        if not self.by_index:
            return self.fifo.popleft()
        pending = self.pending
        if len(pending) == 1:
            # The common case: one request pending, served whatever the sweep's cursor.
            index, trap = pending.popitem()
            self.cursor = index
            return trap
        cursor = self.cursor
        ahead = [i for i in pending if i > cursor]
        index = min(ahead) if ahead else min(pending)
        self.cursor = index
        return pending.pop(index)


class DeviceModelThread(Runner):
    """One thread of a device model (XenGT's kthread, or QEMU), on a dom0 vCPU."""

    def __init__(self, server: DeviceModelServer, index: int) -> None:
        super().__init__(f"{server.label}/{index}")
        self.server = server
        self.sim = server.sim
        self.env = self.sim.env
        self._queue = self.env._queue  # type: ignore[attr-defined]  # see "Reading SimPy's clock"
        self.busy = self.sim.new_busy()
        self.served = 0
        self.wake = Wake(self.env)
        self.pool = self.sim.dom0_pool_for(self)
        #: The callbacks of the event this thread waits on (``waits_on``): once it is
        #: resumed, whoever is appended there runs right after its turn (``run``).
        self.waiters: list[Any] = []
        #: When a vCPU's reply was appended there: until that vCPU has run, the clock
        #: must not move (see "Running ahead" above).
        self.reply_at = -1.0
        self.sim.dm_threads.append(self)
        self.env.process(self.run())

    def waits_on(self, event: simpy.Event) -> simpy.Event:
        """``yield self.waits_on(event)``: wait, remembering who resumes this thread."""
        self.waiters = event.callbacks  # type: ignore[assignment]
        return event

    def boundary(self) -> Process:
        """Between two pieces of work: give the dom0 vCPU to a waiter if credit would."""
        pool = self.pool
        if pool is not None and pool.should_yield(self):
            grant = pool.requeue(self)
            if grant is not None:
                yield self.waits_on(grant)

    def run(self) -> Process:
        env = self.env
        queue = self._queue
        server = self.server
        fifo, pending, jobs = server.fifo, server.pending, server.jobs
        pool = self.pool
        service = server.service
        busy = self.busy
        window_start = busy.window_start
        while True:
            if not (fifo or pending):
                # Sleep; whoever brings work fires the wake-up after the dom0 latency.
                server.cursor = -1
                self.wake = Wake(env)
                server.sleeping.append(self)
                yield self.waits_on(self.wake)
            if pool is not None:
                grant = pool.acquire(self, woken=True)
                if grant is not None:
                    yield self.waits_on(grant)
            while fifo or pending:
                trap = server.take()
                if jobs and trap.kind == "mmio" and trap.access.is_write:
                    # A register write (a context submission) needs a new PPGTT: XenGT
                    # shadows it, write-protecting its pages, before the write completes.
                    yield from jobs.popleft().run(self)
                start = env._now
                delay = service[trap.kind]()
                end = start + delay  # what SimPy makes of a timeout of ``delay`` now
                if pool is None and (not queue or end < queue[0][0]) and self.reply_at != start:
                    env._now = end  # run ahead (see above); SimPy keeps its clock there
                else:
                    yield self.waits_on(env.timeout(delay))
                if start >= window_start:
                    busy.busy_ns += end - start  # Busy.add, inlined for a span in the window
                else:
                    busy.add(start, end)
                self.served += 1
                trap.t_served = end
                # Notify back on the vCPU's event channel: its pCPU resumes it.
                trap.vcpu.pcpu.reply(trap)
                if not queue or queue[0][0] > end:
                    # Nothing else is due now (see "Saving zero-delay events" above), so
                    # the reply's event would come right after this one: the vCPU runs
                    # right after this thread's turn in the event that resumed it
                    # (SimPy calls an event's callbacks in order, appended ones too).
                    done = trap.done
                    self.waiters.extend(done.callbacks)  # type: ignore[arg-type]
                    done.callbacks.clear()  # type: ignore[union-attr]
                    self.reply_at = end
                else:
                    trap.done.succeed()
                if pool is not None and (fifo or pending):
                    yield from self.boundary()
            if pool is not None:
                pool.release(self)


class HypervisorCpu:
    """Xen on one physical CPU: handles the exits of the vCPUs pinned to it.

    Completion on resume (Xen 4.6): ``hvm_vcpu_io_need_completion()`` is true for every
    synchronous request whose data is not a pointer (vcpu.h @4.6, lines 92-96), reads
    and writes alike; ``handle_mmio()`` then records ``HVMIO_mmio_completion`` (io.c
    @4.6, lines 93-94) and ``handle_pio()`` ``HVMIO_pio_completion`` (io.c lines
    143-144). ``hvm_do_resume()`` runs it before the VM entry (hvm.c @4.6, lines
    515-528): MMIO re-runs ``handle_mmio()``, a full second decode and emulation
    (``mmio_decode_ns`` again); port I/O re-runs ``handle_pio()``, its own handling
    without an instruction to decode (``pio_decode_ns`` again). Neither repeats the
    handler scan or the selection.

    ``pool`` is None for a pCPU with one pinned vCPU: nothing else runs there. A shared
    pCPU's vCPUs take turns under its :class:`~sim.model.cpu.CpuPool`.
    """

    def __init__(self, sim: Simulation, index: int) -> None:
        self.sim = sim
        self.index = index
        self.pool: CpuPool | None = None  # set by Simulation once vCPUs are pinned
        c = sim.scenario.costs
        self.resume_ns = {
            "mmio": c.vcpu_wake_ns + c.mmio_decode_ns + c.vmentry_ns,
            "pio": c.vcpu_wake_ns + c.pio_decode_ns + c.vmentry_ns,
        }
        self._exit_ns = {
            "mmio": c.vmexit_ns + c.ept_violation_ns + c.mmio_decode_ns,
            "pio": c.vmexit_ns + c.pio_decode_ns,
        }
        self._before_ns: dict[tuple[str, int], float] = {}  # (kind, handlers checked) -> ns
        self._costs = c
        self._env = sim.env
        self._queue = sim.env._queue  # type: ignore[attr-defined]  # see "Reading SimPy's clock"
        self._walk_ns = sim.visit_cost.walk_ns
        self._counters = sim.recorder.counters
        self._waiting = Wake(sim.env)  # what this pCPU's process waits on (``run``)
        self._handle_first = False  # the exit was handed over, not handled yet
        sim.env.process(self.run())

    def reply(self, trap: Trap) -> None:
        """The device model's event-channel notification for ``trap`` at ``t_served``.

        On a pCPU of its own the vCPU runs at once, so its resume ends at a known time;
        on a shared pCPU it first waits for its turn (``Vcpu.run``)."""
        if self.pool is None:
            trap.t_resumed = trap.t_served + self.resume_ns[trap.access.kind]

    def exit(self, trap: Trap) -> bool:
        """A VM exit of ``trap`` on this pCPU, now; False if Xen settled it at once.

        As in Xen, the vCPU hands the exit to this pCPU's process, which handles it
        (``handle``) and sends the ioreq after that work. When nothing else is due now,
        that hand-off would be the next event, so the exit is handled at once and the
        process woken only at the send (see "Saving zero-delay events" above).
        """
        now = trap.t_trap
        queue = self._queue
        next_due = queue[0][0] if queue else Infinity
        if next_due == now:
            # Another event is due now: it keeps its turn before the hand-off.
            self._handle_first = True
            self._waiting.fire_in(0.0, trap)
            return True
        delay = self.handle(trap, now)
        if delay is None:
            return False
        sent = now + delay  # when SimPy would wake this pCPU's process to send
        if self.pool is None and next_due > sent:
            # Nothing else is due up to the send (and nothing runs after this vCPU at
            # this instant: it was woken by an event of its own), so nothing can see
            # the request before it is sent: put it now, as of then. On a shared pCPU
            # the send also gives the pCPU away, so it keeps its event.
            trap.dm.put(trap, sent)  # type: ignore[union-attr]
            return True
        self._waiting.fire_in(delay, trap)
        return True

    def handle(self, trap: Trap, now: float) -> float | None:
        """Xen's handling of an exit, now: the time until its ioreq is sent.

        The exit, the handler scans, the selection (with its rangeset lock) and the ioreq
        write are work on this pCPU while the vCPU holds it. None for a request Xen
        settles itself (the null handler, a read from RAM): no ioreq, no completion, and
        ``t_resumed`` is set.
        """
        c = self._costs
        access = trap.access
        guest = trap.vcpu.guest
        kind = access.kind
        # The internal handlers hvm_io_intercept() walked (sim.xen.intercept); an EPT
        # violation walks them once more in hvm_mmio_internal() on the NPF path.
        handler, server, visits, p2m_lookups, checked = guest.domain.route_fast(access)
        trap.visits = visits
        before_ns = self._before_ns.get((kind, checked))
        if before_ns is None:
            before_ns = self._exit_ns[kind] + SCANS[kind] * checked * c.handler_check_ns
            self._before_ns[kind, checked] = before_ns
        rangeset = guest.lookup_rangeset(access)
        nodes = len(rangeset) if rangeset is not None else 0
        walk = trap.walk_ns = self._walk_ns(visits, nodes) if visits else 0.0
        wait = 0.0
        if rangeset is not None and rangeset is guest.page_rangeset:
            # find_range() under the read lock; a map/unmap holding it makes us spin.
            t_lock = now + before_ns
            wait = guest.page_lock.read(t_lock, walk) - t_lock
        work = before_ns + wait + walk + p2m_lookups * c.p2m_lookup_ns
        trap.t_selected = now + work
        dm = guest.device_models.get(handler) if server is not None else None
        if dm is None:
            # Null handler (reads ~0, writes dropped) or a read Xen emulates itself
            # (p2m_ioreq_server page): no ioreq, no completion; re-enter at once.
            trap.handler = f"{guest.name}/{handler}"
            self._counters.null_handled += handler == "none"
            # The vCPU keeps its pCPU throughout, so the work is folded into its next
            # run, shared pCPU or not.
            trap.t_served = trap.t_selected
            trap.t_resumed = now + work + c.vmentry_ns
            return None
        trap.handler = dm.label
        trap.dm = dm
        # Copy the ioreq into the shared page and notify; the vCPU blocks in Xen.
        return work + c.ioreq_send_ns

    def run(self) -> Process:
        env = self.sim.env
        while True:
            trap = yield self._waiting
            self._waiting = Wake(env)  # for the next exit
            if self._handle_first:
                # Handed the exit (``exit``): handle it, then send after that work.
                self._handle_first = False
                delay = self.handle(trap, env.now)
                if delay is None:
                    trap.done.succeed()
                    continue
                yield env.timeout(delay)
            if self.pool is not None:
                self.pool.release(trap.vcpu)
            trap.dm.put(trap)  # type: ignore[union-attr]


class Vcpu(Runner):
    """A guest vCPU: think, trap, block until resumed, repeat."""

    def __init__(self, sim: Simulation, guest: GuestRuntime, index: int, pcpu: HypervisorCpu):
        super().__init__(f"{guest.name}/vcpu{index}")
        self.sim = sim
        self.guest = guest
        self.index = index
        self.pcpu = pcpu
        self.think, self.workload = guest.vcpu_source(index, self.name)
        sim.env.process(self.run())

    def _run_guest(self, pool: CpuPool, duration: float) -> Process:
        """Run guest code on a shared pCPU, yielding it to a waiter when credit would."""
        env = self.sim.env
        remaining = duration
        while True:
            chunk = remaining if remaining <= pool.check_ns else pool.check_ns
            yield env.timeout(chunk)
            remaining -= chunk
            if remaining <= 0:
                return
            if pool.should_yield(self):
                grant = pool.requeue(self)
                if grant is not None:
                    yield grant

    def run(self) -> Process:
        env = self.sim.env
        think = self.think
        workload = self.workload
        domain = self.guest.domain
        recorder = self.sim.recorder
        counters = recorder.counters
        pcpu = self.pcpu
        pool = pcpu.pool
        exit_to_xen = pcpu.exit
        protected = domain.p2m  # gfn -> p2m type, for write-protected pages only
        resume_delay = 0.0  # resume work done before guest code; see HypervisorCpu
        if pool is not None:
            grant = pool.acquire(self, woken=False)
            if grant is not None:
                yield grant
        while True:
            if pool is None:
                yield env.timeout(resume_delay + think())
            else:
                yield from self._run_guest(pool, resume_delay + think())
            resume_delay = 0.0
            kind, access = workload.next()
            if access is None:
                continue  # no page table is live to write to
            if kind == "ppgtt_write" and (access.addr >> 12) not in protected:
                # The page's map failed (or was never made): the write does not trap.
                counters.untracked_ppgtt_writes += 1
                continue
            trap = Trap(self, kind, access, env._now, env.event())
            if exit_to_xen(trap):
                # Blocked in Xen until the device model's reply (HypervisorCpu.reply).
                yield trap.done
                if pool is not None and trap.dm is not None:
                    # Woken by the reply (BOOST): wait for the pCPU, then resume there.
                    grant = pool.acquire(self, woken=True)
                    if grant is not None:
                        yield grant
                    trap.t_resumed = env.now + pcpu.resume_ns[access.kind]
            recorder.record(trap)
            resume_delay = trap.t_resumed - env._now
