"""Which vCPU runs on which pCPU: xenalyze's scheduler bookkeeping, ported rule for rule.

Read from tools/xentrace/xenalyze.c (xen.git 2fe6a869da, the last change to it before
c447b7308b): ``sched_runstate_process``, ``vcpu_start``, ``vcpu_prev_update``,
``vcpu_next_update``, ``lose_vcpu``, ``process_lost_records``,
``process_lost_records_end``, ``deactivate_pcpu`` and ``sched_default_vcpu_activate``.
Only ``TRC_SCHED_RUNSTATE_CHANGE`` / ``TRC_SCHED_CONTINUE_RUNNING`` records (the
``TRC_SCHED_MIN`` sub-class) move vCPUs: xenalyze reads ``TRC_SCHED_SWITCH`` in the
verbose sub-class for dumps only. The rules that decide exit arcs:

* each pCPU starts with the "default domain" vCPU of its number as current, so exits
  before the first scheduler record there belong to no real domain;
* a vCPU's first runstate record goes through ``vcpu_start``: it becomes current only if
  the record takes it to running (from running, the pCPU's current is cleared first);
* a runstate change that makes a vCPU *runnable* closes its open exit arc at that TSC:
  xenalyze takes the wake-up as the end of whatever the vCPU was blocked on, so the arc
  of an exit that blocked in Xen ends at the wake-up, not at the next VM entry;
* a lost-records record clears the open arc of the pCPU's current vCPU, marks every vCPU
  that is not running as lost (clearing its arc too), and takes the current vCPU off the
  pCPU until the end of the loss, when the vCPU the record names becomes current;
* a pCPU whose records end marks its current vCPU lost.

Where xenalyze would stop on an error (its default tolerance), this pass goes on as
xenalyze does with ``--tolerance 6`` and counts the case in ``problems``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sim.trace import format as fmt
from sim.trace.merge import ACTIVATE, DEACTIVATE, LOST_END, REAL, Merged

NO_VCPU = -1
RUNNING, RUNNABLE, OFFLINE, LOST, QUEUED, INIT = (
    fmt.RUNNING,
    fmt.RUNNABLE,
    fmt.OFFLINE,
    fmt.LOST,
    fmt.QUEUED,
    fmt.INIT,
)


def vcpu_key(domain: int, vcpu: int) -> int:
    return (domain << 16) | vcpu


def split_key(key: int) -> tuple[int, int]:
    return key >> 16, key & 0xFFFF


class _Vcpu:
    __slots__ = ("activated", "key", "last_old", "p", "state")

    def __init__(self, key: int) -> None:
        self.key = key
        self.state = INIT
        self.p: int | None = None
        self.activated = False
        self.last_old: tuple[int, int, int, int] | None = None  # wrong, actual, pid, tsc


class _Pcpu:
    __slots__ = ("current", "lost_active", "lost_tsc", "lost_vcpu", "seen_valid")

    def __init__(self) -> None:
        self.current: _Vcpu | None = None
        self.lost_active = False
        self.lost_tsc = 0
        self.lost_vcpu: int | None = None  # the vCPU a lost-records record names
        self.seen_valid = True


@dataclass
class SchedEvents:
    """What one merged batch did to the scheduler state, for the arc pass."""

    current: np.ndarray  # per row: the vCPU current on its pCPU when the row is processed
    close_rows: list[int] = field(default_factory=list)  # a vCPU made runnable: arc ends
    close_keys: list[int] = field(default_factory=list)
    clear_rows: list[int] = field(default_factory=list)  # a vCPU's open arc is dropped
    clear_keys: list[int] = field(default_factory=list)
    dom0_running_rows: list[int] = field(default_factory=list)


class Scheduler:
    """Carries the state across batches; :meth:`process` handles one merged batch."""

    def __init__(self) -> None:
        self.vcpus: dict[int, _Vcpu] = {}
        self.pcpus: dict[int, _Pcpu] = {}
        self.lost_cpus = 0
        self.lost_records = 0  # records the hypervisor dropped (sum of the counts)
        self.lost_events = 0
        self.problems: dict[str, int] = {}
        self._ev: SchedEvents | None = None
        self._row = 0

    def _problem(self, what: str) -> None:
        self.problems[what] = self.problems.get(what, 0) + 1

    def _find(self, key: int) -> _Vcpu:
        v = self.vcpus.get(key)
        if v is None:
            v = self.vcpus[key] = _Vcpu(key)
        return v

    # -- the helpers xenalyze uses ---------------------------------------------------------
    def _set_current(self, pid: int, v: _Vcpu | None) -> None:
        self.pcpus[pid].current = v
        self._changes.append((self._row, pid, v.key if v is not None else NO_VCPU))

    def _clear_arc(self, v: _Vcpu) -> None:
        assert self._ev is not None
        self._ev.clear_rows.append(self._row)
        self._ev.clear_keys.append(v.key)

    def _lose(self, v: _Vcpu) -> None:
        self._clear_arc(v)
        v.state = LOST

    def _prev_update(self, pid: int, prev: _Vcpu, new: int) -> None:
        p = self.pcpus[pid]
        if prev.p != pid:
            self._problem("switch away from a vCPU that runs elsewhere")
        elif p.current is None:
            self._problem("switch away with no vCPU current (fatal in xenalyze)")
        self._set_current(pid, None)
        prev.state = new

    def _next_update(self, pid: int, nxt: _Vcpu) -> None:
        p = self.pcpus[pid]
        if p.current is not None:
            if not p.seen_valid:
                p.current.state = LOST
            else:
                self._problem("a vCPU starts running where another is current (fatal)")
        nxt.activated = True
        nxt.state = RUNNING
        nxt.p = pid
        self._set_current(pid, nxt)
        p.seen_valid = True
        if nxt.key >> 16 == 0:
            assert self._ev is not None
            self._ev.dom0_running_rows.append(self._row)

    def _start(self, pid: int, v: _Vcpu, old: int, new: int) -> None:
        p = self.pcpus[pid]
        if old == RUNNING:
            cur = p.current
            if cur is None or cur.key >> 16 != fmt.DEFAULT_DOMAIN:
                self._problem("first record of a vCPU leaves a pCPU that a real vCPU holds")
                return
            cur.state = QUEUED
            self._set_current(pid, None)
        if new != RUNNING:
            return
        v.state = RUNNING
        v.p = pid
        self._set_current(pid, v)
        if v.key >> 16 == 0:
            assert self._ev is not None
            self._ev.dom0_running_rows.append(self._row)

    # -- record handlers -------------------------------------------------------------------
    def _runstate(self, pid: int, event: int, word: int) -> None:
        lo = event & 0xF
        if lo == 1:
            cont = False
            new, old = (event >> 4) & 0xF, (event >> 8) & 0xF
        elif lo == 2:
            cont = True
            new = old = RUNNING
        else:
            self._problem("runstate record of an unknown type")
            return
        if new > OFFLINE or old > OFFLINE:
            self._problem("runstate outside running/runnable/blocked/offline")
            return
        dom, vid = word >> 16, word & 0xFFFF
        if vid > fmt.MAX_CPUS:
            return
        v = self._find(vcpu_key(dom, vid))
        last_old, v.last_old = v.last_old, None
        if v.state == INIT:
            self._start(pid, v, old, new)
            return
        if new == RUNNABLE:
            assert self._ev is not None
            self._ev.close_rows.append(self._row)
            self._ev.close_keys.append(v.key)
        if v.state != old:
            if v.state == LOST:
                if new != RUNNING:
                    return
            elif last_old is not None and last_old[0] == new and last_old[1] == old:
                # xenalyze would shift pCPU last_old[2]'s TSCs here; we report it.
                self._problem("TSC skew detected by xenalyze's runstate check (not applied)")
                return
            else:
                v.last_old = (old, v.state, pid, 0)
                if v.state == RUNNING:
                    return
        if cont:
            if v.state == LOST:
                if self.pcpus[pid].current is not None:
                    self._prev_update(pid, self.pcpus[pid].current, LOST)
                self._next_update(pid, v)
            v.state = RUNNING
        elif old == RUNNING or v.state == RUNNING:
            self._prev_update(pid if old == RUNNING or v.p is None else v.p, v, new)
            if self.lost_cpus and dom != fmt.IDLE_DOMAIN:
                self._lose(v)
        elif new == RUNNING:
            self._next_update(pid, v)
        else:
            v.state = new

    def _lost(self, pid: int, extra: int, data: list[int]) -> None:
        p = self.pcpus[pid]
        if extra != 4:
            self._problem("lost-records record with an unexpected size")
            return
        self.lost_events += 1
        self.lost_records += data[0]
        if p.current is not None:
            self._clear_arc(p.current)
            self._prev_update(pid, p.current, LOST)
        if not p.lost_active:
            self.lost_cpus += 1
        p.lost_active = True
        p.lost_tsc = data[2] | (data[3] << 32)
        for v in list(self.vcpus.values()):
            if v.key >> 16 != fmt.DEFAULT_DOMAIN and v.state != RUNNING:
                self._lose(v)
        p.lost_vcpu = vcpu_key(data[1] & 0xFFFF, data[1] >> 16)

    def _lost_end(self, pid: int, tsc: int) -> None:
        p = self.pcpus[pid]
        if not p.lost_active:
            self._problem("end of a loss on a pCPU that lost nothing")
            return
        if tsc <= p.lost_tsc:
            return
        if p.lost_vcpu is not None:
            if p.current is not None:
                self._problem("end of a loss with a vCPU current")
                return
            self._next_update(pid, self._find(p.lost_vcpu))
            p.lost_vcpu = None
            p.seen_valid = False
        p.lost_active = False
        self.lost_cpus -= 1

    def _activate(self, pid: int) -> None:
        self.pcpus.setdefault(pid, _Pcpu())
        v = self._find(vcpu_key(fmt.DEFAULT_DOMAIN, pid))
        v.activated = True
        v.p = pid
        v.state = RUNNING
        self._set_current(pid, v)

    def _deactivate(self, pid: int) -> None:
        p = self.pcpus[pid]
        if p.current is not None:
            self._lose(p.current)

    # -- one batch -------------------------------------------------------------------------
    def process(self, m: Merged) -> SchedEvents:
        """Run the scheduler records of a merged batch; attribute every row to a vCPU."""
        n = len(m)
        event = m.event
        main = (event >> fmt.MAIN_SHIFT) & 0xFFF
        sub = (event >> fmt.SUB_SHIFT) & 0xF
        real = m.virt == REAL
        is_sched = real & (main == fmt.MAIN_SCHED) & (sub == fmt.SUB_SCHED_MIN)
        is_lost = (event == fmt.TRC_LOST_RECORDS) & ((m.virt == REAL) | (m.virt == LOST_END))
        wanted = np.flatnonzero(is_sched | is_lost | (m.virt == ACTIVATE) | (m.virt == DEACTIVATE))
        ev = self._ev = SchedEvents(current=np.empty(n, dtype=np.int64))
        before = {pid: (p.current.key if p.current else NO_VCPU) for pid, p in self.pcpus.items()}
        self._changes: list[tuple[int, int, int]] = []
        pcpu_l = m.pcpu[wanted].tolist()
        ev_l = event[wanted].tolist()
        virt_l = m.virt[wanted].tolist()
        extra_l = m.extra[wanted].tolist()
        tsc_l = m.tsc[wanted].tolist()
        data_l = m.data[wanted].tolist()
        for row, pid, e, vt, x, t, d in zip(
            wanted.tolist(), pcpu_l, ev_l, virt_l, extra_l, tsc_l, data_l, strict=True
        ):
            self._row = row
            if vt == ACTIVATE:
                self._activate(pid)
                before.setdefault(pid, NO_VCPU)
            elif vt == DEACTIVATE:
                self._deactivate(pid)
            elif vt == LOST_END:
                self._lost_end(pid, t)
            elif e == fmt.TRC_LOST_RECORDS:
                self._lost(pid, x, d)
            else:
                self._runstate(pid, e, d[0])
        self._attribute(m, before)
        self._ev = None
        return ev

    def _attribute(self, m: Merged, before: dict[int, int]) -> None:
        """``current[i]``: the vCPU on row i's pCPU after every earlier row was processed."""
        assert self._ev is not None
        cur = self._ev.current
        cur[:] = NO_VCPU
        by_pcpu: dict[int, list[tuple[int, int]]] = {}
        for row, pid, key in self._changes:
            by_pcpu.setdefault(pid, []).append((row, key))
        for pid in np.unique(m.pcpu).tolist():
            rows = np.flatnonzero(m.pcpu == pid)
            changes = by_pcpu.get(pid, [])
            if not changes:
                cur[rows] = before.get(pid, NO_VCPU)
                continue
            at = np.asarray([c[0] for c in changes], dtype=np.int64)
            val = np.asarray([before.get(pid, NO_VCPU)] + [c[1] for c in changes])
            # A change made while processing row r applies to rows after r.
            cur[rows] = val[np.searchsorted(at, rows, side="left")]
