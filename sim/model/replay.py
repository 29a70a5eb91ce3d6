"""Guests driven by a capture: each vCPU issues the captured accesses after the captured gaps.

A guest with ``replay: {capture, domain, at_end}`` takes no synthetic mix. Its vCPU ``i``
replays the I/O traps of the captured domain's vCPU ``i``, in order: it runs guest code for
the captured gap (from the VM entry that ended the previous trap to the next I/O exit;
the first gap runs from the start of the capture), then issues the captured access. At
the end of its stream it stops trapping (``at_end: stop``) or starts again (``loop``).
The same seed and stream give the same accesses under every design and page count; the
latencies are the model's.

The capture is read through a small interface, so that this module never imports
:mod:`sim.trace` (``tests/test_layout.py``): whoever builds the
:class:`~sim.model.simulation.Simulation` passes a :data:`ReplayOpener`, which turns a
capture path and domain into one :class:`VcpuAccesses` per vCPU. ``sim.trace.replay``
provides it, and the CLI injects it. An opener hands out rows of :data:`ACCESS_DTYPE`
in chunks, so memory stays at one chunk per vCPU whatever the capture's size.

What a replayed access becomes:

* its kind is the model's (``sim.model.devices.kind_of``): an address inside the vGPU's
  BAR0 or VGA ports is ``mmio``/``pio`` (XenGT's), a write to a write-protected page
  (NPF p2m type 15) is ``ppgtt_write``, anything else ``other``. Xen's selection then
  routes it as usual;
* a page-table write lands on one of the model's live page-table pages, chosen by a hash
  of the captured page frame (the same captured page always picks the same slot), at
  the captured offset: the model's pages, not the captured ones, are write-protected, so
  ``vgpu.ppgtt`` sets the page count a replay runs against;
* its size follows ``sim.model.devices.default_size``; data is passed on where the
  capture has it, so a CF8 write latches the captured PCI address.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from sim.model.devices import default_size, kind_of
from sim.xen.abi import PAGE_SHIFT
from sim.xen.ioreq import Access

#: One replayed access: the gap before it (ns), its address space (``SPACE_*``), address,
#: direction, and the captured data word where there is one.
ACCESS_DTYPE = np.dtype(
    [
        ("gap_ns", "<f8"),
        ("space", "u1"),
        ("write", "u1"),
        ("data_valid", "u1"),
        ("addr", "<u8"),
        ("data", "<u4"),
    ]
)
SPACE_PORT, SPACE_MMIO, SPACE_PAGE_TABLE = 0, 1, 2
CHUNK = 4096
_GOLDEN = 0x9E3779B97F4A7C15  # Fibonacci hashing: spreads consecutive frames apart


class VcpuAccesses(Protocol):
    """One vCPU's captured accesses, in order."""

    def __len__(self) -> int: ...

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as an array of :data:`ACCESS_DTYPE`."""
        ...


class CaptureAccesses(Protocol):
    """The accesses of one captured domain, per vCPU."""

    def vcpu(self, index: int) -> VcpuAccesses: ...


#: (capture path, domain, TSC rate in Hz) -> that domain's accesses per vCPU. Gaps are
#: converted to ns at the scenario's ``host.tsc_hz``.
ReplayOpener = Callable[[Path, int, float], CaptureAccesses]


class ReplayVcpu:
    """The workload and think source of one replaying vCPU.

    The vCPU process calls :meth:`think` and :meth:`next` in turn (``Vcpu.run``): think
    gives the gap before the current access, next gives the access and moves on. A
    stopped vCPU thinks forever (an infinite timeout never fires), so it stops trapping
    without any change to the process.
    """

    def __init__(
        self,
        accesses: VcpuAccesses,
        loop: bool,
        xengt_ports: tuple[int, int],
        xengt_mmio: tuple[int, int],
        live_gfns: list[int],
    ) -> None:
        self._src = accesses
        self._n = len(accesses)
        self._loop = loop
        self._ports = xengt_ports
        self._mmio = xengt_mmio
        self._live = live_gfns
        self._pos = 0  # index of the current access in the stream
        self._base = 0  # stream index of the loaded chunk's first row
        self._rows: list[tuple[float, int, int, int, int, int]] = []
        self.issued = 0
        self.stopped = self._n == 0

    def _row(self) -> tuple[float, int, int, int, int, int]:
        i = self._pos - self._base
        if not 0 <= i < len(self._rows):
            self._base = self._pos
            chunk = self._src.read(self._pos, min(self._pos + CHUNK, self._n))
            self._rows = list(
                zip(
                    chunk["gap_ns"].tolist(),
                    chunk["space"].tolist(),
                    chunk["write"].tolist(),
                    chunk["data_valid"].tolist(),
                    chunk["addr"].tolist(),
                    chunk["data"].tolist(),
                    strict=True,
                )
            )
            i = 0
        return self._rows[i]

    def think(self) -> float:
        if self.stopped:
            return math.inf
        return self._row()[0]

    def next(self) -> tuple[str, Access | None]:
        _, space, write, data_valid, addr, data = self._row()
        self.issued += 1
        self._pos += 1
        if self._pos == self._n:
            if self._loop:
                self._pos = 0
            else:
                self.stopped = True
        if space == SPACE_PAGE_TABLE:
            gfns = self._live
            if not gfns:
                return "ppgtt_write", None
            slot = ((addr >> PAGE_SHIFT) * _GOLDEN & 0xFFFFFFFFFFFFFFFF) >> 32
            gfn = gfns[slot % len(gfns)]
            offset = addr & ((1 << PAGE_SHIFT) - 1)
            return "ppgtt_write", Access("mmio", (gfn << PAGE_SHIFT) | offset, 8, True)
        if space == SPACE_PORT:
            lo, hi = self._ports
            kind = kind_of("port", "xengt" if lo <= addr <= hi else "qemu")
            size = default_size("port", addr)
            access = Access("pio", addr, size, bool(write), data=data if data_valid else None)
            return kind, access
        lo, hi = self._mmio
        kind = kind_of("mmio", "xengt" if lo <= addr <= hi else "qemu")
        size = default_size("mmio", addr)
        return kind, Access("mmio", addr, size, bool(write), data=data if data_valid else None)
