"""Write captures: the window layout of ``xentrace``, and the records a model run implies.

:class:`CaptureWriter` keeps one buffer per pCPU and, like ``xentrace`` draining every
CPU's trace buffer in turn (tools/xentrace/xentrace.c), writes all of them out as windows
whenever together they pass ``flush_bytes``: a window is a ``TRC_TRACE_CPU_CHANGE``
record (pCPU, byte size) and then the pCPU's records. Memory stays at ``flush_bytes``
whatever the length of the run, and windows stay close in time, which keeps a streaming
reader's merge small.

:class:`ModelCapture` turns the model's trapped accesses (``sim.model.recorder.Trap``)
into the records Xen 4.6 writes for them (vmx.c ``vmx_vmexit_handler`` and
``ept_handle_violation``, emulate.c ``hvmtrace_io_assist``):

* guest ``g`` (0-based, scenario order, a ``count`` expanded) is domain ``g + 1``; its
  vCPU ``i`` keeps id ``i`` and is given trace pCPU ``first_vcpu(g) + i``, its own; each
  vCPU's first record makes it current there (runnable -> running) and it stays
  current. With ``host.pcpus`` shared, the model's scheduling of vCPUs on them
  (sim.model.cpu) is not traced: the capture shows one vCPU per pCPU;
* port I/O: ``TRC_HVM_VMX_EXIT`` reason IO_INSTRUCTION at ``t_trap``, then
  ``TRC_HVM_IOPORT_READ/WRITE`` [port, data];
* MMIO and writes to write-protected pages: reason EPT_VIOLATION, ``TRC_HVM_NPF``
  [gpa, mfn, qualification, p2m type] (``p2m_mmio_dm`` for MMIO, type 15,
  ``p2m_mmio_write_dm`` in 4.6 / ``p2m_ioreq_server`` from 4.9, for page-table writes),
  then ``TRC_HVM_IOMEM_READ/WRITE`` [gpa, data] (the 64-bit form, as from Xen 4.12,
  for a gpa at or above 4 GiB);
* ``TRC_HVM_VMENTRY`` at ``t_resumed``.

The I/O records carry no access size: Xen's do not either. The TSC counts at
``host.tsc_hz`` from ``TSC_ORIGIN`` at simulated time 0 (xenalyze never counts an arc
whose exit TSC is 0).

**No blocking and no dom0 records.** Xen blocks the vCPU on every ioreq it sends
(``prepare_wait_on_xen_event_channel`` in ``hvm_send_ioreq``, hvm.c @RELEASE-4.6.0 line
2752); ``schedule()`` traces that as runstate changes on its pCPU (schedule.c @4.6, lines
1286-1294), and the reply's ``vcpu_wake`` traces blocked -> runnable (line 418), where
xenalyze ends the arc. Written here, they would end each I/O arc at the wake-up instead
of at ``t_resumed``, and read-back arcs would no longer equal ``trace.csv``'s
``t_resumed - t_trap`` (issue #10's round trip). The model's dom0 vCPUs
(``sim.model.cpu``) are not traced either. In Xen, a dom0 vCPU runs a device model's
answer only after the guest blocked on it; and a round trip is split into stages around
the guest's wake-up, by :mod:`sim.trace.roundtrip` as by xenalyze. dom0 runstate records
without the guest's would show no stage, in a capture no Xen host writes (dom0 serving a
vCPU that never blocked). A completed ``Trap`` does not say when its thread began to run,
either.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from sim.model.scenario import guest_instances
from sim.trace import format as fmt

if TYPE_CHECKING:
    from sim.model.recorder import Trap
    from sim.model.scenario import Scenario

TSC_ORIGIN = 1 << 20
FLUSH_BYTES = 1 << 20
INVALID_MFN = (1 << 64) - 1
#: EPT violation qualification: bit 0 read, bit 1 write, bits 7-8 a guest linear address
#: was translated (SDM Vol. 3 table 28-7).
QUAL_READ, QUAL_WRITE = 0x181, 0x182


class CaptureWriter:
    """Records in, ``xentrace``-layout windows out. Each pCPU's records must come in TSC
    order; records of different pCPUs may interleave freely."""

    def __init__(self, fh: BinaryIO, flush_bytes: int = FLUSH_BYTES) -> None:
        self.fh = fh
        self.flush_bytes = flush_bytes
        self.buffers: dict[int, bytearray] = {}
        self.buffered = 0
        self.records = 0

    def record(self, pcpu: int, event: int, words: tuple[int, ...] = (), tsc: int | None = None):
        buf = self.buffers.get(pcpu)
        if buf is None:
            buf = self.buffers[pcpu] = bytearray()
        raw = fmt.encode(event, words, tsc)
        buf += raw
        self.records += 1
        self.buffered += len(raw)
        if self.buffered >= self.flush_bytes:
            self.flush()

    def flush(self) -> None:
        for pcpu in sorted(self.buffers):
            buf = self.buffers[pcpu]
            if buf:
                self.fh.write(fmt.cpu_change(pcpu, len(buf)))
                self.fh.write(buf)
                buf.clear()
        self.buffered = 0


def tsc_at(t_ns: float, tsc_hz: float) -> int:
    return TSC_ORIGIN + round(t_ns * tsc_hz / 1e9)


class ModelCapture:
    """The trace callback of a model run: one call per completed trap."""

    def __init__(self, scenario: Scenario, writer: CaptureWriter) -> None:
        self.writer = writer
        self.tsc_hz = scenario.host.tsc_hz
        self.guests: dict[str, tuple[int, int]] = {}  # name -> (domain id, first pCPU)
        first = 0
        # Every guest domain, a guest entry with ``count: N`` giving N of them.
        for g, (guest, name) in enumerate(guest_instances(scenario)):
            self.guests[name] = (g + 1, first)
            for i in range(guest.vcpus):
                writer.record(
                    first + i,
                    fmt.runstate_event(fmt.RUNNABLE, fmt.RUNNING),
                    (fmt.vcpu_word(g + 1, i),),
                    TSC_ORIGIN,
                )
            first += guest.vcpus

    def __call__(self, trap: Trap) -> None:
        _, first = self.guests[trap.vcpu.guest.name]
        pcpu = first + trap.vcpu.index
        a = trap.access
        w = self.writer
        data = a.data or 0
        if a.kind == "pio":
            w.record(
                pcpu, fmt.TRC_HVM_VMX_EXIT, (fmt.EXIT_IO_INSTRUCTION, 0), self._tsc(trap.t_trap)
            )
            event = fmt.TRC_HVM_IOPORT_WRITE if a.is_write else fmt.TRC_HVM_IOPORT_READ
            w.record(pcpu, event, (a.addr, data))
        else:
            w.record(
                pcpu, fmt.TRC_HVM_VMX_EXIT, (fmt.EXIT_EPT_VIOLATION, 0), self._tsc(trap.t_trap)
            )
            tracked = trap.kind == "ppgtt_write"
            p2mt = fmt.P2M_IOREQ_SERVER if tracked else fmt.P2M_MMIO_DM
            mfn = a.addr >> 12 if tracked else INVALID_MFN
            qual = QUAL_WRITE if a.is_write else QUAL_READ
            w.record(
                pcpu,
                fmt.TRC_HVM_NPF,
                (a.addr, a.addr >> 32, mfn, mfn >> 32, qual, p2mt),
            )
            event = fmt.TRC_HVM_IOMEM_WRITE if a.is_write else fmt.TRC_HVM_IOMEM_READ
            if a.addr >> 32:
                w.record(pcpu, event | fmt.TRC_64_FLAG, (a.addr, a.addr >> 32, data, 0))
            else:
                w.record(pcpu, event, (a.addr, data))
        w.record(pcpu, fmt.TRC_HVM_VMENTRY, (), self._tsc(trap.t_resumed))

    def _tsc(self, t_ns: float) -> int:
        return tsc_at(t_ns, self.tsc_hz)


def xentrace_output(scenario: Scenario) -> Callable[[Path], contextlib.AbstractContextManager]:
    """For ``run_to_directory``: writes ``xentrace.bin`` into the run's directory."""

    @contextlib.contextmanager
    def opened(directory: Path) -> Iterator[Callable[[Trap], None]]:
        with (directory / "xentrace.bin").open("wb") as fh:
            writer = CaptureWriter(fh)
            yield ModelCapture(scenario, writer)
            writer.flush()

    return opened
