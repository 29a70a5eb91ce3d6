"""What guests do: which accesses trap, where they go, and which pages hold page tables.

Trap kinds (per guest, drawn from ``mix``):

* ``mmio``: a 4-byte register access to the vGPU's BAR0 (read or write);
* ``pio``: a 1-byte access to the VGA ports;
* ``ppgtt_write``: an 8-byte PTE write to one of the vGPU's live page-table pages. It
  traps only if the page is write-protected; if its map failed, the write is untracked;
* ``other``: an access to a device QEMU emulates, which misses every XenGT rangeset.
"""

from __future__ import annotations

import numpy as np

from sim.model.bounds import FIRST_RAM_GFN  # page tables start above the first MiB
from sim.model.scenario import ACCESS_KINDS, Guest
from sim.model.streams import block_sampler
from sim.xen.abi import PAGE_SHIFT
from sim.xen.ioreq import Access


class LivePages:
    """The guest's live page-table pages: O(1) add, remove and uniform choice."""

    __slots__ = ("_index", "gfns")

    def __init__(self) -> None:
        self.gfns: list[int] = []
        self._index: dict[int, int] = {}

    def add(self, gfn: int) -> None:
        self._index[gfn] = len(self.gfns)
        self.gfns.append(gfn)

    def remove(self, gfn: int) -> None:
        i = self._index.pop(gfn)
        last = self.gfns.pop()
        if i < len(self.gfns):
            self.gfns[i] = last
            self._index[last] = i

    def __contains__(self, gfn: int) -> bool:
        return gfn in self._index

    def __len__(self) -> int:
        return len(self.gfns)


class FrameAllocator:
    """Guest page frames for page tables, with a contiguity knob.

    With probability ``contiguity`` the next frame follows the previous one (if free),
    else it is drawn uniformly from the free frames of guest RAM. Adjacent protected
    pages merge into one rangeset node, so contiguity decides range count per page.
    """

    def __init__(self, ram_pages: int, contiguity: float, rng: np.random.Generator) -> None:
        if ram_pages <= FIRST_RAM_GFN:
            raise ValueError("guest RAM is too small for page tables")
        self.lo = FIRST_RAM_GFN
        self.hi = ram_pages  # exclusive
        self.contiguity = contiguity
        self.used: set[int] = set()
        self._uniform = block_sampler(rng, lambda r, n: r.random(n))
        self._prev: int | None = None

    def allocate(self) -> int:
        capacity = self.hi - self.lo
        if len(self.used) >= capacity:
            raise RuntimeError("guest RAM has no free page frames left for page tables")
        prev = self._prev
        if (
            prev is not None
            and self.contiguity > 0
            and self._uniform() < self.contiguity
            and prev + 1 < self.hi
            and prev + 1 not in self.used
        ):
            gfn = prev + 1
        else:
            while True:
                gfn = self.lo + int(self._uniform() * capacity)
                if gfn not in self.used:
                    break
        self.used.add(gfn)
        self._prev = gfn
        return gfn

    def release(self, gfn: int) -> None:
        self.used.discard(gfn)

    def restart_run(self) -> None:
        """A new PPGTT starts its own run of frames."""
        self._prev = None


class AccessGenerator:
    """Draws each next trapping access of one guest from its own streams."""

    def __init__(
        self,
        guest: Guest,
        live_pages: LivePages,
        kind_rng: np.random.Generator,
        addr_rng: np.random.Generator,
    ) -> None:
        mix = guest.mix
        probs = np.array([getattr(mix, k) for k in ACCESS_KINDS], dtype=float)
        probs = probs / probs.sum()
        self._kind = block_sampler(kind_rng, lambda r, n: r.choice(len(ACCESS_KINDS), n, p=probs))
        self._u = block_sampler(addr_rng, lambda r, n: r.random(n))
        v = guest.vgpu
        self._bar_lo, bar_hi = v.bar0_mmio
        self._bar_dwords = (bar_hi - self._bar_lo + 1) // 4 or 1
        self._vga_lo, vga_hi = v.vga_ports
        self._vga_n = vga_hi - self._vga_lo + 1
        self._read_frac = v.mmio_read_fraction
        o = guest.other_devices
        self._other_mmio_lo, other_mmio_hi = o.mmio
        self._other_mmio_dwords = (other_mmio_hi - self._other_mmio_lo + 1) // 4 or 1
        self._other_port_lo, other_port_hi = o.ports
        self._other_port_n = other_port_hi - self._other_port_lo + 1
        self._other_mmio_frac = o.mmio_fraction
        self._live = live_pages

    def next(self) -> tuple[str, Access | None]:
        """The kind of the next trap and its access; ``None`` if no page table is live."""
        kind = ACCESS_KINDS[self._kind()]
        u = self._u
        if kind == "mmio":
            addr = self._bar_lo + 4 * int(u() * self._bar_dwords)
            return kind, Access("mmio", addr, 4, u() >= self._read_frac)
        if kind == "pio":
            port = self._vga_lo + int(u() * self._vga_n)
            return kind, Access("pio", port, 1, u() >= 0.5)
        if kind == "ppgtt_write":
            gfns = self._live.gfns
            if not gfns:
                return kind, None
            gfn = gfns[int(u() * len(gfns))]
            offset = 8 * int(u() * 512)  # one of the page's 512 8-byte PTEs
            return kind, Access("mmio", (gfn << PAGE_SHIFT) | offset, 8, True)
        if u() < self._other_mmio_frac:
            addr = self._other_mmio_lo + 4 * int(u() * self._other_mmio_dwords)
            return kind, Access("mmio", addr, 4, u() >= 0.5)
        port = self._other_port_lo + int(u() * self._other_port_n)
        return kind, Access("pio", port, 1, u() >= 0.5)
