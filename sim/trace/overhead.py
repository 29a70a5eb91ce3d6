"""The model's own cost of a trap outside the device model, per captured device and
direction: what ``trace fit`` takes off a captured latency to leave the service.

A calibration run of the fitted scenario, with every service and wake-up at 0, gives per
trap the time from its VM exit to the device model (``t_served - t_trap``) and from the
device model to its VM entry (``t_resumed - t_served``). What these cost in the model
depends on (``sim.model.processes.HypervisorCpu``):

* **the exit type.** An EPT violation (MMIO, a write to a write-protected page) takes the
  EPT-violation path, decodes the instruction, scans Xen's internal I/O handlers twice
  and is emulated again on resume (``mmio_decode_ns`` twice); an I/O-instruction exit
  scans once and re-runs ``handle_pio``. With the measured defaults the two are ~4 us
  apart, so QEMU's devices, ports and MMIO alike of kind ``other``, must not share one
  figure;
* **the address.** Where the range sits in the rangeset the selection walks (Xen 4.6's
  list visits every node before it), how many internal handlers are checked, the
  design's p2m lookups;
* **the direction.** A register write is where XenGT runs a PPGTT replacement that has
  fallen due (``sim.model.ppgtt``), before it serves the write;
* **the trap kind.** Which rangeset, and so which lock, a selection reads.

A captured device is one range of one address space and one server, so keying by
(device, direction) covers all four. A key's mean is used when the calibration has at
least :data:`MIN_KEY` of its traps; else the device's (both directions), else its (trap
kind, exit type), else its exit type's, else the mean over every trap sent to a device
model. What varies within a key (a page's own place in the list, rangeset-lock and pCPU
waits) is random in the model too: it stays in the residual, and ``spread`` says how
large it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.model.scenario import ACCESS_KINDS
from sim.trace.devicemap import DeviceMap
from sim.trace.iostream import SPACE_MMIO, SPACE_PAGE_TABLE, SPACE_PORT, TRAP_DTYPE
from sim.trace.validate import SimTraps

#: Calibration traps a key needs before its own mean is used.
MIN_KEY = 30
EXIT_NAMES = {True: "IO_INSTRUCTION", False: "EPT_VIOLATION"}


@dataclass
class Overhead:
    """The model's cost of one captured device's traps in one direction (ns)."""

    device: str
    write: bool
    kind: str
    exit_reason: str
    captured: int  # traps of this device and direction in the capture
    calibration: int  # calibration traps the mean is over
    source: str  # which key those are: "device, direction", "device", ...
    before: float  # VM exit -> device model
    after: float  # device model -> VM entry
    spread: float  # standard deviation of before + after over those traps


@dataclass
class Overheads:
    rows: list[Overhead]
    before: np.ndarray  # [device index (the last: no device), write]
    after: np.ndarray

    def per_trap(self, device: np.ndarray, write: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per captured trap (its device index, -1 for none, and direction): the model's
        cost before and after the device model; 0 for a trap in no device."""
        row = np.where(device >= 0, device, len(self.before) - 1)
        col = np.asarray(write, dtype=np.int64)
        return self.before[row, col], self.after[row, col]


def calibration_devices(dmap: DeviceMap, sim: SimTraps) -> np.ndarray:
    """Per calibration trap, the index of the captured device its address falls in."""
    rows = np.zeros(len(sim.addr), dtype=TRAP_DTYPE)
    rows["addr"] = sim.addr
    rows["addr_known"] = 1
    ppgtt = sim.kind == ACCESS_KINDS.index("ppgtt_write")
    rows["space"] = np.where(sim.is_port, SPACE_PORT, np.where(ppgtt, SPACE_PAGE_TABLE, SPACE_MMIO))
    return dmap.index_of(rows)


def handled_in_xen(dmap: DeviceMap, sim: SimTraps, device: np.ndarray) -> set[int]:
    """Devices whose calibration traps Xen's own emulators (sim.xen.intercept) mostly
    answered in the model: no device model serves them, so they get no service."""
    out = set()
    for i in range(len(dmap.devices)):
        mine = device == i
        if mine.any() and (~sim.to_dm[mine]).mean() > 0.5:
            out.add(i)
    return out


def overheads(
    dmap: DeviceMap,
    sim: SimTraps,
    sim_device: np.ndarray,
    captured_device: np.ndarray,
    captured_write: np.ndarray,
    left_out: set[int] | frozenset[int] = frozenset(),
) -> Overheads:
    """The table of the module docstring, from the calibration run ``sim`` (its traps'
    devices ``sim_device``) for the capture's traps (their devices and directions); the
    devices ``left_out`` (Xen's own emulators answer them) get no row."""
    n = len(dmap.devices)
    before_all = sim.t_served - sim.t_trap
    after_all = sim.t_resumed - sim.t_served
    dm = sim.to_dm
    counts = np.bincount(
        captured_device[captured_device >= 0] * 2 + captured_write[captured_device >= 0],
        minlength=2 * n,
    )
    before = np.zeros((n + 1, 2))
    after = np.zeros((n + 1, 2))
    rows = []
    for i, d in enumerate(dmap.devices):
        port = d.space == "port"
        kind = ACCESS_KINDS.index(d.kind)
        mine = dm & (sim_device == i)
        for w in (0, 1):
            keys = (
                ("device, direction", mine & (sim.is_write == bool(w))),
                ("device", mine),
                ("kind, exit type", dm & (sim.kind == kind) & (sim.is_port == port)),
                ("exit type", dm & (sim.is_port == port)),
                ("all", dm),
            )
            usable = [(s, k) for s, k in keys if k.sum() >= MIN_KEY] or [
                (s, k) for s, k in keys if k.any()
            ]
            source, sel = usable[0] if usable else ("none", dm)
            if sel.any():
                b, a = before_all[sel], after_all[sel]
                before[i, w], after[i, w] = float(b.mean()), float(a.mean())
                spread = float((b + a).std())
            else:
                spread = 0.0
            if counts[2 * i + w] and i not in left_out:
                rows.append(
                    Overhead(
                        d.name,
                        bool(w),
                        d.kind,
                        EXIT_NAMES[port],
                        int(counts[2 * i + w]),
                        int(sel.sum()),
                        source,
                        float(before[i, w]),
                        float(after[i, w]),
                        spread,
                    )
                )
    return Overheads(rows, before, after)
