"""Named devices of a guest, and a guest driven by a capture: two optional guest keys.

``devices`` replaces the fixed trap classes of a guest (``mix``, the vGPU's BAR0 and VGA
ports, ``other_devices``) with the devices a guest was seen to use, as ``vgpu-sim trace
fit`` writes them: each has an address space, its ranges, its share of the guest's traps,
the share of its traps that are reads, and the ioreq server that handles it::

    devices:
      - {name: gpu-bar0, space: mmio, server: xengt, ranges: [[0xf7800000, 0xf7bfffff]],
         share: 0.55, read_fraction: 0.5}
      - {name: vga, space: port, server: xengt, ranges: [[0x3b0, 0x3df]], share: 0.05,
         read_fraction: 0.5}
      - {name: page-tables, space: page_tables, server: xengt, share: 0.3}
      - {name: nic, space: mmio, server: qemu, ranges: [[0xfebf0000, 0xfebfffff]],
         share: 0.1, read_fraction: 0.5}

XenGT's server claims the ranges of the ``xengt`` devices (and the vGPU's PCI slot);
``qemu`` devices are left to QEMU, the default server. A ``page_tables`` device stands
for writes to the vGPU's live page-table pages (``vgpu.ppgtt``), which XenGT
write-protects. Each device's traps get the model's trap kind of their server and space
(:func:`kind_of`), so service times per kind and the result rows work unchanged.

``replay`` drives the guest's vCPUs with the accesses of a capture instead
(:mod:`sim.model.replay`).

Access sizes: captures carry none (Xen's IOPORT/IOMEM records have no size field,
``hvmtrace_io_assist``, xen/arch/x86/hvm/emulate.c @RELEASE-4.6.0 lines 26-51), so both a
device and a replayed access take :func:`default_size`, unless a device gives ``size``.
"""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, Field, model_validator

from sim.inputs import StrictModel, bounded
from sim.model.streams import block_sampler
from sim.xen.abi import PAGE_SHIFT
from sim.xen.ioreq import Access

Addr = bounded(int, 0, (1 << 64) - 1, "a 64-bit address (an ioreq's addr is a u64)")
Share = bounded(float, 0, 1, "a share of traps")
DomainId = bounded(int, 0, 32767, "a domid_t is 15 bits, below the reserved ids")
Space = Literal["port", "mmio", "page_tables"]
Server = Literal["xengt", "qemu"]
#: PCI configuration mechanism #1 (CF8 address, CFC-CFF data): guests use 4-byte ``outl``
#: on CF8, and Xen latches CF8 only from a 4-byte write (``hvm_access_cf8``, hvm.c @4.6).
PCI_CONFIG_PORTS = (0xCF8, 0xCFF)
PTE_BYTES = 8


def _ordered(value: list[int]) -> list[int]:
    if value[0] > value[1]:
        raise ValueError(f"start {value[0]:#x} is above end {value[1]:#x}")
    return value


Range = Annotated[list[Addr], Field(min_length=2, max_length=2), AfterValidator(_ordered)]


def default_size(space: str, addr: int) -> int:
    """The access size the model gives an access whose size is not known (a capture's).

    Port I/O: 4 bytes on the PCI configuration ports CF8-CFF, else 1 (legacy device ports
    are byte registers; the model's VGA traps are 1 byte). MMIO: 4 bytes (GPU and most
    device registers are 32-bit). Page-table writes: 8 bytes, one PTE.
    """
    if space == "port":
        return 4 if PCI_CONFIG_PORTS[0] <= addr <= PCI_CONFIG_PORTS[1] else 1
    if space == "page_tables":
        return PTE_BYTES
    return 4


def kind_of(space: str, server: str) -> str:
    """The model's trap kind for a device: XenGT's MMIO and ports are ``mmio`` and
    ``pio``, page-table pages ``ppgtt_write``, anything QEMU serves ``other``."""
    if space == "page_tables":
        return "ppgtt_write"
    if server == "qemu":
        return "other"
    return "mmio" if space == "mmio" else "pio"


class Device(StrictModel):
    """One device a guest traps on: its ranges, its share of traps, its server."""

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    space: Space = Field(
        description="port: I/O ports; mmio: guest-physical MMIO; page_tables: writes to the "
        "vGPU's live page-table pages (vgpu.ppgtt), which need no ranges."
    )
    server: Server = Field(
        description="The ioreq server that handles the device: xengt claims its ranges; "
        "qemu, the default server, gets whatever no other server claims."
    )
    ranges: list[Range] = Field(
        default_factory=list,
        max_length=4096,
        description="[start, end] pairs, inclusive; an access picks a range by its length, "
        "then an address uniformly inside it (aligned to the access size).",
    )
    share: Share = Field(
        description="Share of the guest's traps that go to this device; shares sum to 1."
    )
    read_fraction: Share = Field(
        0.5, description="Share of this device's traps that are reads (0 for page_tables)."
    )
    size: Literal[1, 2, 4, 8] | None = Field(
        None, description="Access size in bytes; null: sim.model.devices.default_size."
    )

    @model_validator(mode="before")
    @classmethod
    def _page_tables_are_written(cls, data: Any) -> Any:
        """A page_tables device's read_fraction defaults to 0: its traps are writes."""
        if isinstance(data, dict) and data.get("space") == "page_tables":
            return {"read_fraction": 0.0, **data}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Device:
        if self.space == "page_tables":
            if self.ranges:
                raise ValueError("a page_tables device has no ranges (its pages are vgpu.ppgtt)")
            if self.server != "xengt":
                raise ValueError("page-table pages are write-protected by XenGT: server xengt")
            if self.read_fraction != 0:
                raise ValueError("page-table traps are writes: read_fraction must be 0")
        elif not self.ranges:
            raise ValueError(f"a {self.space} device needs at least one range")
        elif self.space == "port" and any(e > 0xFFFF for _, e in self.ranges):
            raise ValueError("I/O ports end at 0xffff")
        return self


def check_devices(devices: list[Device]) -> None:
    """Shares sum to 1, names are unique, at most one page_tables device, no two
    devices' ranges overlap in the same space."""
    if not devices:
        raise ValueError("devices: give at least one device, or leave the key out")
    total = sum(d.share for d in devices)
    if not math.isclose(total, 1.0, rel_tol=0, abs_tol=1e-6):
        raise ValueError(f"devices: shares must sum to 1, they sum to {total:g}")
    names = [d.name for d in devices]
    if len(set(names)) != len(names):
        raise ValueError(f"devices: names must be unique, got {names}")
    if sum(d.space == "page_tables" for d in devices) > 1:
        raise ValueError("devices: at most one page_tables device")
    for space in ("port", "mmio"):
        spans = sorted((s, e, d.name) for d in devices if d.space == space for s, e in d.ranges)
        for (_, e1, n1), (s2, _, n2) in pairwise(spans):
            if s2 <= e1:
                raise ValueError(f"devices: {space} ranges of {n1} and {n2} overlap at {s2:#x}")


#: Keys a guest may not give together with ``devices`` / ``replay`` / ``vcpu_think``,
#: because those replace them. Checked on the file's own keys, before defaults fill in.
_REPLACED = {
    "devices": ("mix", "other_devices", "vgpu.bar0_mmio", "vgpu.vga_ports"),
    "replay": ("think", "vcpu_think", "mix", "other_devices", "devices"),
    "vcpu_think": ("think",),
}


def conflicting_guest_keys(guest: dict) -> tuple[str, str] | None:
    """``(key path, problem)`` if a guest's raw data gives a key that another one replaces."""
    for option, replaced in _REPLACED.items():
        if guest.get(option) is None:
            continue
        for key in replaced:
            head, _, tail = key.partition(".")
            value = guest.get(head)
            present = isinstance(value, dict) and tail in value if tail else head in guest
            if present:
                return key, f"cannot be given together with {option}, which replaces it"
    return None


class Replay(StrictModel):
    """Drive a guest's vCPUs with the accesses of a xentrace capture (sim.model.replay)."""

    capture: Annotated[str, Field(min_length=1, max_length=4096)] = Field(  # PATH_MAX
        description="A binary xentrace capture; a relative path is relative to the scenario."
    )
    domain: DomainId = Field(
        description="The captured domain whose accesses this guest replays; guest vCPU i "
        "replays the domain's vCPU i (a vCPU with no I/O in the capture never traps)."
    )
    at_end: Literal["stop", "loop"] = Field(
        "stop",
        description="stop: a vCPU that has issued its last access stops trapping; loop: it "
        "starts its stream again.",
    )


class DeviceAccessGenerator:
    """Draws each next trap of a guest from its ``devices``, like ``AccessGenerator``
    draws it from ``mix`` (the same stream names: ``<guest>/mix`` and ``<guest>/addr``)."""

    def __init__(
        self,
        devices: list[Device],
        live_gfns: list[int],
        kind_rng: np.random.Generator,
        addr_rng: np.random.Generator,
    ) -> None:
        probs = np.array([d.share for d in devices], dtype=float)
        probs = probs / probs.sum()
        self._pick = block_sampler(kind_rng, lambda r, n: r.choice(len(devices), n, p=probs))
        self._u = block_sampler(addr_rng, lambda r, n: r.random(n))
        self._live = live_gfns  # the guest's LivePages.gfns, which the PPGTTs keep current
        self._devices = [self._prepare(d) for d in devices]

    @staticmethod
    def _prepare(d: Device) -> tuple[str, str, list[tuple[int, int, int]], list[float], float]:
        # Per range: its start, its access size, and the (end - start + 1) // size aligned
        # slots it holds (at least one); a range is picked by its slots.
        slots = []
        for s, e in d.ranges:
            size = d.size or default_size(d.space, s)
            slots.append((s, size, max(1, (e - s + 1) // size)))
        total = sum(n for _, _, n in slots)
        cum = list(np.cumsum([n / total for _, _, n in slots])) if slots else []
        return (d.space, kind_of(d.space, d.server), slots, cum, d.read_fraction)

    def next(self) -> tuple[str, Access | None]:
        """The kind of the next trap and its access; ``None`` if no page table is live."""
        space, kind, slots, cum, read_fraction = self._devices[self._pick()]
        u = self._u
        if space == "page_tables":
            gfns = self._live
            if not gfns:
                return kind, None
            gfn = gfns[int(u() * len(gfns))]
            offset = PTE_BYTES * int(u() * (4096 // PTE_BYTES))
            return kind, Access("mmio", (gfn << PAGE_SHIFT) | offset, PTE_BYTES, True)
        i = 0
        if len(slots) > 1:
            x = u()
            while i < len(cum) - 1 and x >= cum[i]:
                i += 1
        start, size, n = slots[i]
        addr = start + size * int(u() * n)
        is_write = u() >= read_fraction
        return kind, Access("pio" if space == "port" else "mmio", addr, size, is_write)
