"""Exit arcs per vCPU, as xenalyze defines and counts them, with their I/O records.

From tools/xentrace/xenalyze.c (``hvm_vmexit_process``, ``hvm_close_vmexit``,
``hvm_vmentry_process``, ``hvm_handler_process``, ``hvm_io_assist_process``,
``hvm_mmio_assist_process``, ``hvm_npf_process``, ``toplevel_assert_check``):

* an HVM record belongs to the vCPU current on its pCPU; none is counted while no vCPU
  is current or the idle domain is, and a vCPU first seen with PV records takes no HVM;
* a VM exit opens an arc (an exit with the wrong number of data words is ignored; a
  second exit before any entry replaces the first, which is then never counted);
* the arc is closed by the vCPU's next VM entry, or earlier by a runstate change that
  makes the vCPU runnable; a lost-records record or a lost vCPU drops it uncounted;
* a closed arc is counted unless its exit TSC is 0 or after the closing TSC; an arc of 0
  cycles counts in ``count`` but not in the mean (``update_cycles`` / ``PRINT_SUMMARY``:
  the mean is the integer ``cycles / nonzero arcs``);
* I/O and NPF records count only inside an open arc; the first port or MMIO record of an
  arc decides its kind, the last one of that kind gives the address.

The pass is vectorised: events of a batch are sorted by (vCPU, processing order) and
each closer is paired with the event before it. An arc still open at the end of a batch
is carried into the next one, with what it has collected.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.trace import format as fmt
from sim.trace.merge import REAL, Merged
from sim.trace.roundtrip import RoundTrips, RoundTripTracker
from sim.trace.sched import NO_VCPU, SchedEvents

EXIT, ENTRY, CLOSE, CLEAR, IO, NPF = range(6)
IO_NONE, IO_PIO, IO_MMIO = 0, 1, 2
CLOSED_BY_ENTRY, CLOSED_BY_WAKE = 0, 1
SVM_BIT = 1 << 20  # added to an AMD SVM exit code so it never reads as an Intel one

_FIELDS = (
    "key",
    "row",
    "seq",
    "kind",
    "tsc",
    "reason",
    "pcpu",
    "io_kind",
    "io_write",
    "io_addr",
    "io_data",
    "io_valid",
    "npf_gpa",
    "npf_p2mt",
)


@dataclass
class ArcBatch:
    """Complete exit arcs (one row each), in the order they closed.

    ``domain``/``vcpu`` are Xen's ids (xenalyze's default domain, 32768, for exits before
    any scheduler record on the pCPU); ``exit_reason`` is the VMX code (an SVM code has
    ``SVM_BIT`` added); ``end_tsc`` is where xenalyze closes the arc (the VM entry, or the
    wake-up when ``closed_by`` is ``CLOSED_BY_WAKE``); ``cycles = end_tsc - exit_tsc``.
    The I/O columns come from the arc's IOPORT/IOMEM record (``io_kind`` 0: none), the
    NPF columns from its TRC_HVM_NPF record (``npf_p2mt`` -1: none). ``exit_seq`` and
    ``end_seq`` number the records in processing order across the capture.
    """

    domain: np.ndarray
    vcpu: np.ndarray
    pcpu: np.ndarray
    exit_reason: np.ndarray
    exit_tsc: np.ndarray
    end_tsc: np.ndarray
    cycles: np.ndarray
    closed_by: np.ndarray
    io_kind: np.ndarray
    io_write: np.ndarray
    io_addr: np.ndarray
    io_data: np.ndarray
    io_data_valid: np.ndarray
    npf_gpa: np.ndarray
    npf_p2mt: np.ndarray
    exit_seq: np.ndarray
    end_seq: np.ndarray

    def __len__(self) -> int:
        return len(self.cycles)


def _hvm_events(m: Merged, current: np.ndarray) -> dict[str, np.ndarray]:
    """The HVM records xenalyze would process, as events of the vCPU they belong to."""
    ev = m.event
    main = (ev >> fmt.MAIN_SHIFT) & 0xFFF
    sub = (ev >> fmt.SUB_SHIFT) & 0xF
    idle = (current >> 16) == fmt.IDLE_DOMAIN
    hvm = (main == fmt.MAIN_HVM) & (sub != fmt.SUB_HVM_EMUL)
    ok = (m.virt == REAL) & hvm & (current != NO_VCPU) & ~idle
    base = ev & ~np.uint32(fmt.TRC_64_FLAG)
    x64 = (ev & fmt.TRC_64_FLAG) != 0
    extra = m.extra.astype(np.int64)
    vmx = base == fmt.TRC_HVM_VMX_EXIT
    svm = base == fmt.TRC_HVM_SVM_EXIT
    want = np.where(x64, 3, 2)
    is_exit = ok & (vmx | svm) & ((extra == want) | (extra == want + 1))
    is_entry = ok & (ev == fmt.TRC_HVM_VMENTRY)
    is_pio = ok & ((ev == fmt.TRC_HVM_IOPORT_READ) | (ev == fmt.TRC_HVM_IOPORT_WRITE))
    is_mmio = ok & ((base == fmt.TRC_HVM_IOMEM_READ) | (base == fmt.TRC_HVM_IOMEM_WRITE))
    is_npf = ok & (ev == fmt.TRC_HVM_NPF)
    rows = np.flatnonzero(is_exit | is_entry | is_pio | is_mmio | is_npf)
    d = m.data[rows].astype(np.uint64)
    kind = np.select(
        [is_exit[rows], is_entry[rows], is_npf[rows]], [EXIT, ENTRY, NPF], default=IO
    ).astype(np.int8)
    reason = d[:, 0].astype(np.int64) + np.where(svm[rows], SVM_BIT, 0)
    io_kind = np.select([is_pio[rows], is_mmio[rows]], [IO_PIO, IO_MMIO], IO_NONE)
    wide = x64[rows] & is_mmio[rows]
    addr = np.where(wide, d[:, 0] | (d[:, 1] << np.uint64(32)), d[:, 0])
    data = np.where(wide, d[:, 2], d[:, 1])
    valid = extra[rows] == np.where(wide, 4, 2)  # xenalyze: data present iff exact size
    return {
        "key": current[rows],
        "row": rows,
        "seq": m.seq[rows],
        "kind": kind,
        "tsc": m.tsc[rows],
        "reason": np.where(kind == EXIT, reason, 0),
        "pcpu": m.pcpu[rows],
        "io_kind": io_kind.astype(np.int8),
        "io_write": (ev[rows] & fmt.IO_WRITE_BIT) != 0,
        "io_addr": np.where(kind == NPF, 0, addr).astype(np.uint64),
        "io_data": data.astype(np.uint64),
        "io_valid": valid,
        "npf_gpa": np.where(kind == NPF, d[:, 0] | (d[:, 1] << np.uint64(32)), 0),
        "npf_p2mt": np.where(kind == NPF, d[:, 5].astype(np.int64), -1),
    }


def _sched_events(s: SchedEvents, m: Merged, kind: int, rows: list[int], keys: list[int]):
    r = np.asarray(rows, dtype=np.int64)
    n = len(r)
    z = np.zeros(n, dtype=np.int64)
    return {
        "key": np.asarray(keys, dtype=np.int64),
        "row": r,
        "seq": m.seq[r] if n else z,
        "kind": np.full(n, kind, dtype=np.int8),
        "tsc": m.tsc[r] if n else np.zeros(0, dtype=np.uint64),
        "reason": z,
        "pcpu": m.pcpu[r] if n else z.astype(np.int32),
        "io_kind": z.astype(np.int8),
        "io_write": z.astype(bool),
        "io_addr": z.astype(np.uint64),
        "io_data": z.astype(np.uint64),
        "io_valid": z.astype(bool),
        "npf_gpa": z.astype(np.uint64),
        "npf_p2mt": np.full(n, -1, dtype=np.int64),
    }


class ArcBuilder:
    """Turns merged batches (with their scheduler events) into :class:`ArcBatch` es."""

    def __init__(self) -> None:
        #: vCPU -> its open arc (an EXIT event) and what its I/O records gave so far.
        self.open: dict[int, dict[str, np.ndarray]] = {}
        self.first_type: dict[int, int] = {}  # vCPU -> HVM (1) or PV (2), xenalyze's rule
        self.ignored_hvm = 0  # HVM records of a vCPU that xenalyze would not process
        self.trips = RoundTripTracker()

    def _carry_in(self) -> dict[str, np.ndarray] | None:
        if not self.open:
            return None
        parts = list(self.open.values())
        return {f: np.concatenate([p[f] for p in parts]) for f in _FIELDS}

    def process(self, m: Merged, s: SchedEvents) -> tuple[ArcBatch, RoundTrips]:
        if len(m):
            rows = np.asarray(s.dom0_running_rows, dtype=np.int64)
            open_seqs = [int(a["seq"][0]) for a in self.open.values()]
            self.trips.add_dom0_running(m.seq[rows], m.tsc[rows], min([int(m.seq[0]), *open_seqs]))
        hvm = _hvm_events(m, s.current)
        hvm = self._type_filter(m, s.current, hvm)
        parts = [
            hvm,
            _sched_events(s, m, CLOSE, s.close_rows, s.close_keys),
            _sched_events(s, m, CLEAR, s.clear_rows, s.clear_keys),
        ]
        carry = self._carry_in()
        if carry is not None:
            parts.insert(0, carry)
        ev = {f: np.concatenate([p[f] for p in parts]) for f in _FIELDS}
        # Processing order: row, and on one row a close before a clear (sched.py order).
        order = np.lexsort((ev["kind"] == CLEAR, ev["row"], ev["key"]))
        ev = {f: v[order] for f, v in ev.items()}
        return self._pair(ev)

    def _type_filter(
        self, m: Merged, current: np.ndarray, hvm: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Drop HVM events of vCPUs whose first typed record was PV (``vcpu_set_data_type``)."""
        main = (m.event >> fmt.MAIN_SHIFT) & 0xFFF
        pv = main == fmt.MAIN_PV
        typed = (m.virt == REAL) & ((main == fmt.MAIN_HVM) | pv) & (current != NO_VCPU)
        rows = np.flatnonzero(typed)
        if len(rows):
            keys, first = np.unique(current[rows], return_index=True)
            for k, i in zip(keys.tolist(), first.tolist(), strict=True):
                if k not in self.first_type:
                    self.first_type[k] = 2 if pv[rows[i]] else 1
        if all(t == 1 for t in self.first_type.values()):
            return hvm
        pv = np.asarray([k for k, t in self.first_type.items() if t == 2], dtype=np.int64)
        keep = ~np.isin(hvm["key"], pv)
        self.ignored_hvm += int((~keep).sum())
        return {f: v[keep] for f, v in hvm.items()}

    def _pair(self, ev: dict[str, np.ndarray]) -> tuple[ArcBatch, RoundTrips]:
        n = len(ev["kind"])
        kind, key = ev["kind"], ev["key"]
        is_state = kind <= CLEAR
        idx = np.arange(n)
        # For every event, the index of the last state event of the same vCPU up to it.
        last_state = np.where(is_state, idx, -1)
        np.maximum.accumulate(last_state, out=last_state)
        same = last_state >= 0
        same[same] = key[last_state[same]] == key[same]
        # Previous state event strictly before each state event.
        prev_state = np.full(n, -1, dtype=np.int64)
        st = np.flatnonzero(is_state)
        if len(st) > 1:
            prev_state[st[1:]] = np.where(key[st[1:]] == key[st[:-1]], st[:-1], -1)
        closer = (kind == ENTRY) | (kind == CLOSE)
        pair = closer & (prev_state >= 0)
        pair[pair] = kind[prev_state[pair]] == EXIT
        close_at = np.flatnonzero(pair)
        exit_at = prev_state[close_at]
        # I/O records attach to the exit they follow while it is open.
        io_ev = (kind == IO) | (kind == NPF)
        attached = io_ev & same
        attached[attached] = kind[last_state[attached]] == EXIT
        owner = np.where(attached, last_state, -1)
        info = _collect_io(ev, owner, n)
        # Arcs still open at the end of the batch are carried, I/O included.
        self.open = {}
        last_of_key = np.flatnonzero(np.r_[key[1:] != key[:-1], True]) if n else idx
        for i in last_of_key.tolist():
            j = int(last_state[i]) if same[i] else -1
            if j >= 0 and kind[j] == EXIT:
                self.open[int(key[j])] = _carry_row(ev, info, j)
        exit_tsc = ev["tsc"][exit_at].astype(np.uint64)
        end_tsc = ev["tsc"][close_at].astype(np.uint64)
        counted = (exit_tsc != 0) & (exit_tsc <= end_tsc)
        close_at, exit_at = close_at[counted], exit_at[counted]
        exit_tsc, end_tsc = exit_tsc[counted], end_tsc[counted]
        k = key[exit_at]
        arcs = ArcBatch(
            domain=(k >> 16).astype(np.int32),
            vcpu=(k & 0xFFFF).astype(np.int32),
            pcpu=ev["pcpu"][exit_at].astype(np.int32),
            exit_reason=ev["reason"][exit_at],
            exit_tsc=exit_tsc,
            end_tsc=end_tsc,
            cycles=(end_tsc - exit_tsc).astype(np.int64),
            closed_by=np.where(kind[close_at] == CLOSE, CLOSED_BY_WAKE, CLOSED_BY_ENTRY).astype(
                np.int8
            ),
            io_kind=info["io_kind"][exit_at],
            io_write=info["io_write"][exit_at],
            io_addr=info["io_addr"][exit_at],
            io_data=info["io_data"][exit_at],
            io_data_valid=info["io_valid"][exit_at],
            npf_gpa=info["npf_gpa"][exit_at],
            npf_p2mt=info["npf_p2mt"][exit_at],
            exit_seq=ev["seq"][exit_at],
            end_seq=ev["seq"][close_at],
        )
        wake = arcs.closed_by == CLOSED_BY_WAKE
        cols = ("domain", "vcpu", "io_kind", "exit_tsc", "end_tsc", "exit_seq", "end_seq")
        trips = self.trips.process(
            key,
            kind,
            ev["tsc"],
            close_at[wake],
            {c: getattr(arcs, c)[wake] for c in cols},
            EXIT,
            ENTRY,
            # I/O records only: a carried-in exit also holds its arc's I/O columns.
            {
                "io_kind": np.where(kind == IO, ev["io_kind"], 0),
                **{c: ev[c] for c in ("io_write", "io_addr", "io_data", "io_valid")},
            },
        )
        return arcs, trips


def _collect_io(ev: dict[str, np.ndarray], owner: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Per exit event: the arc's I/O kind (first port/MMIO record), the fields of the last
    record of that kind, and the last NPF record."""
    out = {
        "io_kind": ev["io_kind"].copy() if n else np.zeros(0, np.int8),
        "io_write": ev["io_write"].copy(),
        "io_addr": ev["io_addr"].copy(),
        "io_data": ev["io_data"].copy(),
        "io_valid": ev["io_valid"].copy(),
        "npf_gpa": ev["npf_gpa"].copy(),
        "npf_p2mt": ev["npf_p2mt"].copy(),
    }
    # Exit events themselves carry nothing unless they are a carried-in arc (row < 0).
    fresh_exit = (ev["kind"] == EXIT) & (ev["row"] >= 0)
    for f in out:
        out[f][fresh_exit] = -1 if f == "npf_p2mt" else 0
    io = np.flatnonzero((owner >= 0) & (ev["kind"] == IO) & (ev["io_kind"] != IO_NONE))
    if len(io):
        own = owner[io]
        first = np.full(n, n, dtype=np.int64)
        np.minimum.at(first, own, io)
        # A carried-in arc already has a kind; otherwise the first record decides.
        has = out["io_kind"] != IO_NONE
        decided = np.where(has, out["io_kind"], ev["io_kind"][np.minimum(first, n - 1)])
        decided = np.where((first < n) | has, decided, IO_NONE)
        match = ev["io_kind"][io] == decided[own]
        last = np.full(n, -1, dtype=np.int64)
        np.maximum.at(last, own[match], io[match])
        got = np.flatnonzero(last >= 0)
        src = last[got]
        out["io_kind"][got] = decided[got]
        for f in ("io_write", "io_addr", "io_data", "io_valid"):
            out[f][got] = ev[f][src]
    npf = np.flatnonzero((owner >= 0) & (ev["kind"] == NPF))
    if len(npf):
        last = np.full(n, -1, dtype=np.int64)
        np.maximum.at(last, owner[npf], npf)
        got = np.flatnonzero(last >= 0)
        out["npf_gpa"][got] = ev["npf_gpa"][last[got]]
        out["npf_p2mt"][got] = ev["npf_p2mt"][last[got]]
    return out


def _carry_row(ev: dict[str, np.ndarray], info: dict[str, np.ndarray], j: int):
    row = {f: ev[f][j : j + 1].copy() for f in _FIELDS}
    for f in ("io_kind", "io_write", "io_addr", "io_data", "io_valid", "npf_gpa", "npf_p2mt"):
        row[f] = info[f][j : j + 1].copy()
    row["row"] = np.full(1, -1, dtype=np.int64)  # before every row of the next batch
    return row
