"""Deterministic xentrace captures for the tests: a small Xen-like host, record by record.

``host_capture(seed, ...)`` simulates pCPUs running guest vCPUs, an idle vCPU per pCPU
and dom0 vCPUs serving blocking I/O exits, and writes what Xen's tracer would: VM
exits/entries, IOPORT/IOMEM/NPF records, and runstate changes (blocked -> runnable on the
waker's pCPU, as ``vcpu_wake`` traces there). Knobs make it adversarial: preemption in
the middle of an arc, exits without an entry, lost records, exits before the first
scheduler record, TSC ties across pCPUs, small interleaved windows, 64-bit variants.

The same arguments always give the same bytes: ``test_trace_agreement`` stores what
xenalyze printed for some of them.
"""

from __future__ import annotations

import heapq
import random
import struct
from dataclasses import dataclass, field

from sim.trace import format as fmt

RUNNING, RUNNABLE, BLOCKED = fmt.RUNNING, fmt.RUNNABLE, fmt.BLOCKED
QUICK_EXITS = (10, 12, 1, 18, 31, 32, 28)  # CPUID, HLT, EXTERNAL_INTERRUPT, VMCALL, MSRs, CR


@dataclass
class Knobs:
    pcpus: int = 4
    guests: int = 2
    vcpus: int = 2
    exits: int = 400  # per guest vCPU
    preempt: float = 0.0  # chance an open arc is preempted (runnable) before its entry
    drop_entry: float = 0.0  # chance an exit has no entry
    lost: int = 0  # lost-records records to insert
    early_exits: int = 0  # exits before the first scheduler record of a pCPU
    tick: int = 1  # TSC granularity; large values make ties across pCPUs
    window: tuple[int, int] = (4096, 65536)  # window sizes in bytes, drawn per flush
    wide: bool = False  # 64-bit exit records and MMIO above 4 GiB
    no_tsc_exits: float = 0.0  # chance an exit record carries no TSC
    # Stages of a blocking I/O exit, cycles drawn uniformly: the vCPU blocked -> dom0
    # running (when dom0 was blocked), dom0's service of one request, the guest woken ->
    # running, and running -> its VM entry (after any schedule). The defaults make short
    # stages; test_trace_agreement pins the bytes they give.
    dom0_wake: tuple[int, int] = (500, 8000)
    dom0_service: tuple[int, int] = (2_000, 30_000)
    guest_wake: tuple[int, int] = (100, 3000)
    resume: tuple[int, int] = (50, 400)


@dataclass
class _Pcpu:
    records: list[bytes] = field(default_factory=list)
    last_tsc: int = 0


class _Host:
    def __init__(self, seed: int, k: Knobs) -> None:
        self.rng = random.Random(seed)
        self.k = k
        self.p = [_Pcpu() for _ in range(k.pcpus)]
        self.queue: list[tuple[int, int, str, tuple]] = []
        self.n = 0
        self.dom0: dict = {}

    def emit(self, pcpu: int, t: int, event: int, words=(), tsc=True) -> None:
        p = self.p[pcpu]
        t = max(t, p.last_tsc)
        t -= t % self.k.tick
        t = max(t, p.last_tsc)
        p.last_tsc = t
        p.records.append(fmt.encode(event, tuple(words), t if tsc else None))

    def at(self, t: int, what: str, *args) -> None:
        self.n += 1
        heapq.heappush(self.queue, (t, self.n, what, args))

    def runstate(self, pcpu: int, t: int, dom: int, vcpu: int, old: int, new: int) -> None:
        self.emit(pcpu, t, fmt.runstate_event(old, new), (fmt.vcpu_word(dom, vcpu),))


def host_capture(seed: int, knobs: Knobs | None = None) -> bytes:
    k = knobs or Knobs()
    h = _Host(seed, k)
    rng = h.rng
    t0 = 1_000_000
    guest_pcpus = max(1, k.pcpus - 1)
    dom0_pcpu = k.pcpus - 1
    vcpus = [(g + 1, v) for g in range(k.guests) for v in range(k.vcpus)]
    home = {gv: i % guest_pcpus for i, gv in enumerate(vcpus)}
    # Exits before any scheduler record (xenalyze gives them to its "default domain").
    for i in range(k.early_exits):
        pc = i % k.pcpus
        h.emit(pc, t0 + 10 * i, fmt.TRC_HVM_VMX_EXIT, (30, 0x1000))
        h.emit(pc, t0 + 10 * i + 5, fmt.TRC_HVM_VMENTRY)
    start = t0 + 1000
    for pc in range(k.pcpus):
        h.runstate(pc, start, fmt.IDLE_DOMAIN, pc, RUNNABLE, RUNNING)
    h.runstate(dom0_pcpu, start + 1, 0, 0, RUNNABLE, BLOCKED)
    h.dom0 = {"state": BLOCKED, "queue": [], "busy": False}
    running: dict[int, tuple[int, int] | None] = dict.fromkeys(range(k.pcpus))
    waiting: dict[int, list[tuple[int, int]]] = {pc: [] for pc in range(k.pcpus)}
    left = dict.fromkeys(vcpus, k.exits)
    for i, gv in enumerate(vcpus):
        h.at(start + 10 + 7 * i, "wake", gv)

    def schedule(pc: int, t: int) -> None:
        if running[pc] is not None or not waiting[pc]:
            return
        gv = waiting[pc].pop(0)
        h.runstate(pc, t, fmt.IDLE_DOMAIN, pc, RUNNING, RUNNABLE)
        h.runstate(pc, t, *gv, RUNNABLE, RUNNING)
        running[pc] = gv
        h.at(t + rng.randint(*k.resume), "resume", gv)

    while h.queue:
        t, _, what, args = heapq.heappop(h.queue)
        gv = args[0] if args else None
        pc = home[gv] if gv is not None else dom0_pcpu
        if what == "wake":  # a guest vCPU becomes runnable on its home pCPU
            waiting[pc].append(gv)
            schedule(pc, t)
        elif what == "resume":  # the VM entry, then guest code until the next exit
            if rng.random() >= k.drop_entry:
                h.emit(pc, t, fmt.TRC_HVM_VMENTRY)
            if left[gv] == 0:
                h.at(t + 5, "leave", gv, BLOCKED)
            else:
                left[gv] -= 1
                h.at(t + rng.randint(200, 20_000), "exit", gv)
        elif what == "exit":
            _exit(h, gv, pc, t)
        elif what == "leave":  # the vCPU leaves its pCPU (blocked in Xen, or preempted)
            state = args[1]
            h.runstate(pc, t, *gv, RUNNING, state)
            h.runstate(pc, t, fmt.IDLE_DOMAIN, pc, RUNNABLE, RUNNING)
            running[pc] = None
            if state == RUNNABLE:
                h.at(t + rng.randint(100, 5000), "wake", gv)
            elif left[gv] or len(args) > 2:  # blocked on an ioreq: dom0 has to answer
                dom0 = h.dom0
                dom0["queue"].append(gv)
                if dom0["state"] == BLOCKED:  # vcpu_wake traces on the waker's pCPU
                    h.runstate(pc, t, 0, 0, BLOCKED, RUNNABLE)
                    dom0["state"] = RUNNABLE
                    h.at(t + rng.randint(*k.dom0_wake), "dom0_run")
            schedule(pc, t)
        elif what == "dom0_run":
            h.runstate(pc, t, fmt.IDLE_DOMAIN, pc, RUNNING, RUNNABLE)
            h.runstate(pc, t, 0, 0, RUNNABLE, RUNNING)
            h.dom0["state"] = RUNNING
            h.at(t + rng.randint(*k.dom0_service), "dom0_done")
        elif what == "dom0_done":  # the device model answers: the guest is woken
            dom0 = h.dom0
            woken = dom0["queue"].pop(0)
            h.runstate(pc, t, *woken, BLOCKED, RUNNABLE)
            h.at(t + rng.randint(*k.guest_wake), "wake", woken)
            if dom0["queue"]:
                h.at(t + rng.randint(*k.dom0_service), "dom0_done")
            else:
                h.runstate(pc, t, 0, 0, RUNNING, BLOCKED)
                h.runstate(pc, t, fmt.IDLE_DOMAIN, pc, RUNNABLE, RUNNING)
                dom0["state"] = BLOCKED
    _insert_lost(h, k)
    return _layout(h, k)


def _exit(h: _Host, gv: tuple[int, int], pc: int, t: int) -> None:
    k, rng = h.k, h.rng
    wide = k.wide and rng.random() < 0.5
    event = fmt.TRC_HVM_VMX_EXIT64 if wide else fmt.TRC_HVM_VMX_EXIT
    rip = (0xFFFFFFFF81000000 + rng.randint(0, 0xFFFF)) if wide else rng.randint(0, 0xFFFFF)

    def words(reason: int) -> tuple[int, ...]:
        return (reason, rip, rip >> 32) if wide else (reason, rip)

    stamp = rng.random() >= k.no_tsc_exits
    roll = rng.random()
    if roll < 0.35:  # port I/O to dom0: blocks
        h.emit(pc, t, event, words(30), stamp)
        port = rng.choice((0x3B0, 0x3C4, 0x3C5, 0xCF8, 0xCFC, 0x60))
        write = rng.random() < 0.5
        ev = fmt.TRC_HVM_IOPORT_WRITE if write else fmt.TRC_HVM_IOPORT_READ
        h.emit(pc, t, ev, (port, rng.randint(0, 255)), tsc=False)
        h.at(t + rng.randint(100, 400), "leave", gv, BLOCKED, "ioreq")
    elif roll < 0.6:  # MMIO through an EPT violation: blocks
        h.emit(pc, t, event, words(48), stamp)
        gpa = rng.choice((0xF7800000, 0xF7800010, 0xFEBF0000))
        if wide:
            gpa += 1 << 32
        p2mt = rng.choice((fmt.P2M_MMIO_DM, fmt.P2M_IOREQ_SERVER))
        h.emit(pc, t, fmt.TRC_HVM_NPF, (gpa, gpa >> 32, 0xFFFF, 0, 0x181, p2mt), tsc=False)
        write = rng.random() < 0.5
        ev = fmt.TRC_HVM_IOMEM_WRITE if write else fmt.TRC_HVM_IOMEM_READ
        if gpa >> 32:
            h.emit(pc, t, ev | fmt.TRC_64_FLAG, (gpa, gpa >> 32, 7, 0), tsc=False)
        else:
            h.emit(pc, t, ev, (gpa, 7), tsc=False)
        h.at(t + rng.randint(100, 400), "leave", gv, BLOCKED, "ioreq")
    else:  # handled inside Xen
        h.emit(pc, t, event, words(rng.choice(QUICK_EXITS)), stamp)
        if rng.random() < k.preempt:
            h.at(t + rng.randint(20, 200), "leave", gv, RUNNABLE)
        else:
            h.at(t + rng.randint(500, 9000), "resume", gv)


def _insert_lost(h: _Host, k: Knobs) -> None:
    """Replace a run of HVM records by a lost-records record naming the vCPU that ran, as
    Xen does when a trace buffer fills (losing scheduler records instead makes states that
    xenalyze itself stops on)."""
    rng = h.rng
    for _ in range(k.lost):
        pc = rng.randrange(k.pcpus)
        recs = h.p[pc].records
        if len(recs) < 40:
            continue
        a = rng.randrange(5, len(recs) - 30)
        b = a + rng.randint(2, 6)
        if any(_event(r) >> 12 != 0x81 and _event(r) >> 12 != 0x82 for r in recs[a:b]):
            continue
        first = _tsc_of(recs[a:b])
        after = _tsc_of(recs[b:]) or first
        ran = _running_before(recs[:a])
        if not first or after <= first or ran is None:
            continue
        dom, vcpu = ran
        lost = fmt.encode(
            fmt.TRC_LOST_RECORDS,
            (b - a, dom | (vcpu << 16), first & 0xFFFFFFFF, first >> 32),
            after,
        )
        recs[a:b] = [lost]


def _event(rec: bytes) -> int:
    return struct.unpack_from("<I", rec)[0] & fmt.EVENT_MASK


def _running_before(recs: list[bytes]) -> tuple[int, int] | None:
    for r in reversed(recs):
        e = _event(r)
        if e & ~0xFF0 == fmt.TRC_SCHED_RUNSTATE_CHANGE and (e >> 4) & 0xF == RUNNING:
            (head,) = struct.unpack_from("<I", r)
            word = struct.unpack_from("<I", r, 12 if head >> 31 else 4)[0]
            return word >> 16, word & 0xFFFF
    return None


def _tsc_of(recs: list[bytes]) -> int:
    for r in recs:
        (head,) = struct.unpack_from("<I", r)
        if head >> 31:
            return struct.unpack_from("<Q", r, 4)[0]
    return 0


def _layout(h: _Host, k: Knobs) -> bytes:
    """Cut each pCPU's records into windows and interleave them roughly by time."""
    rng = h.rng
    pieces: list[tuple[int, int, bytes]] = []  # (first TSC, pCPU, bytes)
    for pc, p in enumerate(h.p):
        i = 0
        while i < len(p.records):
            size, j, buf = rng.randint(*k.window), i, bytearray()
            while j < len(p.records) and (len(buf) < size or j == i):
                buf += p.records[j]
                j += 1
            key = _tsc_of(p.records[i:j]) + rng.randint(0, 50_000)
            if pieces and pieces[-1][1] == pc:
                key = max(key, pieces[-1][0])  # a pCPU's windows stay in its order
            pieces.append((key, pc, bytes(buf)))
            i = j
    pieces.sort(key=lambda x: (x[0], x[1]))
    # Every pCPU's first window in the first epoch, in pCPU order, as xentrace starts.
    firsts: dict[int, int] = {}
    for n, (_, pc, _) in enumerate(pieces):
        firsts.setdefault(pc, n)
    head = [pieces[firsts[pc]] for pc in sorted(firsts)]
    rest = [x for n, x in enumerate(pieces) if n not in set(firsts.values())]
    out = bytearray()
    for _, pc, buf in head + rest:
        out += fmt.cpu_change(pc, len(buf)) + buf
    return bytes(out)
