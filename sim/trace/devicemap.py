"""Group the addresses a captured domain trapped on into devices, for a fitted scenario.

Rules (stated in ``fit.md`` too):

* **Page tables.** Writes whose EPT violation has p2m type 15 (a page an ioreq server
  write-protects: ``p2m_mmio_write_dm`` in Xen 4.6, ``p2m_ioreq_server`` from 4.9) form
  one ``page_tables`` device served by XenGT; the distinct page frames written give the
  vGPU's live page count (a lower bound: pages not written during the capture are not
  seen) and how often a written page's neighbour was written too (``contiguity``).
* **Ports.** Ports inside a range of :data:`KNOWN_PORTS` (the conventional PC/AT port
  map) form that named device; other ports are clustered, a gap of more than
  :data:`PORT_GAP` ports starting a new device. A device's range runs from the lowest to
  the highest port seen.
* **MMIO.** Addresses inside :data:`KNOWN_MMIO` form that named device; others are
  clustered with a gap of more than :data:`MMIO_GAP` bytes. Range: lowest address seen to
  the highest plus its access size, less one. Clusters never straddle a named device or
  the edge of XenGT's range (below).
* **Servers.** A capture does not say which ioreq server handled an access. A device
  goes to ``xengt`` when its range overlaps the vGPU's ranges of the schema (BAR0
  ``0xf7800000-0xf7bfffff``, VGA ports ``0x3b0-0x3df``, ``sim.model.scenario.Vgpu``) or
  it is the page-table device; every other device goes to ``qemu``, the default server.
  Edit ``server:`` in the written scenario to say otherwise.
* **Unknown ports.** Port reads whose record is missing (see ``sim.trace.iostream``)
  are shared among the port devices in proportion to their reads.
* At most :data:`MAX_DEVICES` devices per space: the gaps widen until they fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.model.devices import default_size, kind_of
from sim.model.scenario import Vgpu
from sim.trace.iostream import SPACE_MMIO, SPACE_PAGE_TABLE, SPACE_PORT

# [PUB] the conventional IBM PC/AT I/O port map (as QEMU's PC machine and Xen's hvmloader
# lay it out): names only, to label what a capture shows.
KNOWN_PORTS: tuple[tuple[str, int, int], ...] = (
    ("pic-master", 0x20, 0x21),
    ("pit", 0x40, 0x43),
    ("keyboard", 0x60, 0x64),
    ("rtc", 0x70, 0x71),
    ("post", 0x80, 0x80),
    ("pic-slave", 0xA0, 0xA1),
    ("ide-secondary", 0x170, 0x177),
    ("ide-primary", 0x1F0, 0x1F7),
    ("com2", 0x2F8, 0x2FF),
    ("vga", 0x3B0, 0x3DF),
    ("floppy", 0x3F0, 0x3F5),
    ("com1", 0x3F8, 0x3FF),
    ("pci-config", 0xCF8, 0xCFF),
)
# [PUB] fixed x86 MMIO regions: legacy VGA memory, IOAPIC, HPET, local APIC.
KNOWN_MMIO: tuple[tuple[str, int, int], ...] = (
    ("vga-memory", 0xA0000, 0xBFFFF),
    ("ioapic", 0xFEC00000, 0xFEC00FFF),
    ("hpet", 0xFED00000, 0xFED003FF),
    ("lapic", 0xFEE00000, 0xFEE00FFF),
)
PORT_GAP = 0x20  # [ASSUMPTION] ports further apart than this belong to different devices
#: [ASSUMPTION] 1 MiB: accesses closer than this are taken as one device. A capture shows
#: a few registers of a large BAR (a GPU's is 4 MiB or more), so a finer gap splits one BAR
#: into several devices; devices of different servers are split at XenGT's ranges anyway.
MMIO_GAP = 0x100000
MAX_DEVICES = 24  # per address space


@dataclass
class SeenDevice:
    name: str
    space: str  # "port" | "mmio" | "page_tables"
    server: str
    first: int
    last: int
    traps: float = 0.0
    reads: float = 0.0
    closed_by_wake: int = 0
    addresses: int = 0

    @property
    def kind(self) -> str:
        return kind_of(self.space, self.server)

    def scenario_entry(self, total: float) -> dict:
        entry: dict = {
            "name": self.name,
            "space": self.space,
            "server": self.server,
            "share": self.traps / total,
        }
        if self.space != "page_tables":
            entry["ranges"] = [[self.first, self.last]]
            entry["read_fraction"] = self.reads / self.traps if self.traps else 0.5
        else:
            entry["read_fraction"] = 0.0
        return entry


@dataclass
class PageTables:
    pages: int  # distinct page frames written
    contiguity: float  # share of written pages whose next frame was written too


def _default_xengt() -> dict[str, tuple[int, int]]:
    fields = Vgpu.model_fields
    bar0 = fields["bar0_mmio"].default
    vga = fields["vga_ports"].default
    return {"mmio": (bar0[0], bar0[1]), "port": (vga[0], vga[1])}


def _clusters(addrs: np.ndarray, gap: int, barriers: np.ndarray) -> list[tuple[int, int]]:
    """Runs of sorted unique addresses no more than ``gap`` apart and with no barrier (the
    start of a named device) between them; at most MAX_DEVICES runs."""
    if not len(addrs):
        return []
    side = np.searchsorted(barriers, addrs, side="right")
    while True:
        cut = np.flatnonzero((np.diff(addrs) > gap) | (np.diff(side) != 0))
        starts = np.r_[0, cut + 1]
        ends = np.r_[cut, len(addrs) - 1]
        if len(starts) <= MAX_DEVICES or gap > 1 << 40:
            return [(int(addrs[s]), int(addrs[e])) for s, e in zip(starts, ends, strict=True)]
        gap *= 2


def _space_devices(
    space: str, addrs: np.ndarray, known: tuple[tuple[str, int, int], ...], gap: int
) -> list[SeenDevice]:
    """Named devices for addresses inside a known range, clusters for the rest."""
    xengt = _default_xengt()[space]
    out: list[SeenDevice] = []
    rest = np.ones(len(addrs), dtype=bool)
    for name, lo, hi in known:
        inside = (addrs >= lo) & (addrs <= hi)
        if inside.any():
            out.append(SeenDevice(name, space, "", int(addrs[inside][0]), int(addrs[inside][-1])))
            rest &= ~inside
    prefix = "ports" if space == "port" else "mmio"
    # Named devices and XenGT's range cut clusters, so no device straddles two servers.
    cuts = [lo for _, lo, _ in known] + [xengt[0], xengt[1] + 1]
    barriers = np.array(sorted(cuts), dtype=addrs.dtype)
    for lo, hi in _clusters(addrs[rest], gap, barriers):
        out.append(SeenDevice(f"{prefix}-{lo:x}", space, "", lo, hi))
    out.sort(key=lambda d: d.first)
    for i, d in enumerate(out):
        if space == "mmio":  # the last register seen ends a dword later
            d.last += default_size("mmio", d.last) - 1
            if i + 1 < len(out):
                d.last = min(d.last, out[i + 1].first - 1)
        d.server = "xengt" if d.first <= xengt[1] and xengt[0] <= d.last else "qemu"
    return out


@dataclass
class DeviceMap:
    devices: list[SeenDevice]
    page_tables: PageTables | None
    unknown_port_reads: int

    def index_of(self, traps: np.ndarray) -> np.ndarray:
        """Per trap, the index of its device (unknown ports: the port device with most
        reads, for grouping latencies by kind)."""
        out = np.full(len(traps), -1, dtype=np.int64)
        for space_code, space in ((SPACE_PORT, "port"), (SPACE_MMIO, "mmio")):
            idx = [i for i, d in enumerate(self.devices) if d.space == space]
            if not idx:
                continue
            firsts = np.array([self.devices[i].first for i in idx], dtype=np.uint64)
            sel = (traps["space"] == space_code) & (traps["addr_known"] == 1)
            pos = np.searchsorted(firsts, traps["addr"][sel], side="right") - 1
            out[sel] = np.asarray(idx, dtype=np.int64)[np.maximum(pos, 0)]
            if space == "port":
                busiest = max(idx, key=lambda i: self.devices[i].reads)
                out[(traps["space"] == SPACE_PORT) & (traps["addr_known"] == 0)] = busiest
        pt = [i for i, d in enumerate(self.devices) if d.space == "page_tables"]
        if pt:
            out[traps["space"] == SPACE_PAGE_TABLE] = pt[0]
        return out

    def scenario_devices(self) -> list[dict]:
        total = sum(d.traps for d in self.devices)
        entries = [d.scenario_entry(total) for d in self.devices if d.traps > 0]
        # Shares are rounded for the file; the last one takes up the rounding.
        for e in entries:
            e["share"] = round(e["share"], 6)
            if "read_fraction" in e:
                e["read_fraction"] = round(e["read_fraction"], 4)
        if entries:
            biggest = max(entries, key=lambda e: e["share"])
            biggest["share"] = round(1.0 - sum(e["share"] for e in entries if e is not biggest), 6)
        return entries


def map_devices(traps: np.ndarray) -> DeviceMap:
    """Devices from one domain's I/O traps (rows of ``sim.trace.iostream.TRAP_DTYPE``)."""
    devices: list[SeenDevice] = []
    for code, space, known, gap in (
        (SPACE_PORT, "port", KNOWN_PORTS, PORT_GAP),
        (SPACE_MMIO, "mmio", KNOWN_MMIO, MMIO_GAP),
    ):
        sel = (traps["space"] == code) & (traps["addr_known"] == 1)
        devices += _space_devices(space, np.unique(traps["addr"][sel]), known, gap)
    page_tables = None
    wp = traps["space"] == SPACE_PAGE_TABLE
    if wp.any():
        gfns = np.unique(traps["addr"][wp] >> np.uint64(12))
        adjacent = np.isin(gfns + np.uint64(1), gfns).mean() if len(gfns) > 1 else 0.0
        page_tables = PageTables(pages=len(gfns), contiguity=float(adjacent))
        devices.append(SeenDevice("page-tables", "page_tables", "xengt", 0, 0))
    dmap = DeviceMap(devices, page_tables, int((traps["addr_known"] == 0).sum()))
    idx = dmap.index_of(traps)
    write = traps["write"] == 1
    wake = traps["closed_by"] == 1
    known = traps["addr_known"] == 1
    for i, d in enumerate(devices):
        mine = (idx == i) & known
        d.traps = float(mine.sum())
        d.reads = float((mine & ~write).sum())
        d.closed_by_wake = int(((idx == i) & wake).sum())
        d.addresses = len(np.unique(traps["addr"][mine]))
    # Port reads of unknown port: shared among the port devices by their reads.
    ports = [d for d in devices if d.space == "port"]
    reads = sum(d.reads for d in ports)
    if dmap.unknown_port_reads and reads:
        for d in ports:
            extra = dmap.unknown_port_reads * d.reads / reads
            d.traps += extra
            d.reads += extra
    return dmap
