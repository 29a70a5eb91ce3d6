"""The capture reader that replaying guests use (``sim.model.replay``'s ``ReplayOpener``).

:func:`open_capture` reads a capture once, in bounded memory, and writes each vCPU's I/O
traps of the domain (:mod:`sim.trace.iostream`) as rows of
``sim.model.replay.ACCESS_DTYPE`` to a file of its own in a temporary directory; the
model reads them back in chunks from a memory map. So memory stays at one decode batch
while reading and one chunk per vCPU while running, whatever the capture's size; the
disk holds 24 bytes per replayed access until the replay is closed or the process ends.

Gaps are converted from TSC cycles to ns at the rate given (the scenario's
``host.tsc_hz``). A vCPU's first gap runs from the capture's first TSC. A port read whose
port the capture does not hold (see ``sim.trace.iostream``) cannot be issued: it is left
out, and its gap and latency go into the next access's gap, so the later accesses keep
their place in time (``skipped`` counts them).
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np

from sim.inputs import InputError
from sim.model.replay import ACCESS_DTYPE
from sim.trace.iostream import DomainStats, Spool, io_traps
from sim.trace.reader import Capture


class _VcpuFile:
    """One vCPU's accesses on disk (``sim.model.replay.VcpuAccesses``)."""

    def __init__(self, rows: np.ndarray) -> None:
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.array(self._rows[start:stop])


class CaptureReplay:
    """One domain's accesses per vCPU (``sim.model.replay.CaptureAccesses``)."""

    def __init__(self, directory: Path, vcpus: dict[int, np.ndarray], skipped: int) -> None:
        self.directory = directory
        self._vcpus = vcpus
        self.skipped = skipped
        self._cleanup = weakref.finalize(self, shutil.rmtree, directory, True)

    def vcpu(self, index: int) -> _VcpuFile:
        return _VcpuFile(self._vcpus.get(index, np.zeros(0, dtype=ACCESS_DTYPE)))

    @property
    def accesses(self) -> dict[int, int]:
        return {v: len(rows) for v, rows in sorted(self._vcpus.items())}

    def close(self) -> None:
        self._vcpus = {}
        self._cleanup()


def _accesses(
    chunk: np.ndarray, hz: float, carry: dict[int, float], first_exit: dict[int, int]
) -> dict[int, np.ndarray]:
    """Per vCPU, the chunk's traps as replayed accesses. ``carry`` holds the time of left-out
    traps, added to the next gap of their vCPU; a vCPU's first access gets a NaN gap and
    its exit TSC in ``first_exit``, for the caller to fill in."""
    out: dict[int, np.ndarray] = {}
    gap = chunk["gap_tsc"].astype(np.float64) * (1e9 / hz)
    end = np.where(chunk["resume_tsc"] > 0, chunk["resume_tsc"], chunk["end_tsc"])
    busy = (end.astype(np.int64) - chunk["exit_tsc"].astype(np.int64)) * (1e9 / hz)
    for v in np.unique(chunk["vcpu"]).tolist():
        sel = np.flatnonzero(chunk["vcpu"] == v)
        keep = chunk["addr_known"][sel] == 1
        # Time of each run of left-out traps goes into the next kept access's gap.
        lost = np.where(keep, 0.0, gap[sel] + busy[sel])
        run = np.cumsum(lost) - np.maximum.accumulate(np.where(keep, np.cumsum(lost), 0.0))
        extra = np.r_[carry.get(v, 0.0), run[:-1]]
        carry[v] = float(run[-1])
        rows = np.zeros(int(keep.sum()), dtype=ACCESS_DTYPE)
        src = chunk[sel][keep]
        rows["gap_ns"] = gap[sel][keep] + extra[keep]
        rows["space"] = src["space"]
        rows["write"] = src["write"]
        rows["data_valid"] = src["data_valid"]
        rows["addr"] = src["addr"]
        rows["data"] = src["data"]
        if v not in first_exit and len(rows):
            first_exit[v] = int(src["exit_tsc"][0])
            rows["gap_ns"][0] = np.nan  # from the capture's first TSC, known at the end
        out[v] = rows
    return out


def open_capture(path: Path, domain: int, tsc_hz: float) -> CaptureReplay:
    """Read ``path`` once and keep domain ``domain``'s accesses per vCPU, on disk."""
    cap = Capture(path)
    stats = DomainStats(domain)
    directory = Path(tempfile.mkdtemp(prefix="vgpu-sim-replay-"))
    try:
        spools: dict[int, Spool] = {}
        carry: dict[int, float] = {}
        first_exit: dict[int, int] = {}
        for chunk in io_traps(cap, domain, stats):
            for v, rows in _accesses(chunk, tsc_hz, carry, first_exit).items():
                spool = spools.get(v)
                if spool is None:
                    spool = spools[v] = Spool(directory / f"vcpu{v}.bin", ACCESS_DTYPE)
                spool.append(rows)
        vcpus = {v: s.close() for v, s in spools.items()}
        if domain not in stats.domains or not any(len(r) for r in vcpus.values()):
            what = "no exits" if domain not in stats.domains else "no I/O accesses to replay"
            raise InputError(path, "replay.domain", f"domain {domain} has {what} in this capture")
        for v, rows in vcpus.items():
            if v in first_exit:
                rows["gap_ns"][0] = max(0, first_exit[v] - cap.first_tsc) * (1e9 / tsc_hz)
                if isinstance(rows, np.memmap):
                    rows.flush()
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return CaptureReplay(directory, vcpus, stats.unknown_port_reads)
