"""Numbers and formats of Xen's public interface that selection depends on.

``HVMOP_IO_RANGE_*`` (xen/include/public/hvm/hvm_op.h @4.6), ``IOREQ_TYPE_*``
(xen/include/public/hvm/ioreq.h @4.6), the p2m type of write-protected pages
(xen/include/asm-x86/p2m.h @4.6), ``MAX_NR_IO_RANGES``, the PCI config ports and the
``HVMOP_PCI_SBDF`` encoding. Section numbers refer to ``shared/reference/xen-semantics.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

PAGE_SHIFT = 12

PAGE_SIZE = 1 << PAGE_SHIFT

#: ``MAX_NR_IO_RANGES`` (xen/include/asm-x86/hvm/domain.h @4.5..4.10; xen/ioreq.h @master,
#: line 40): 256, never raised upstream. Intel's XenGT tree used 512 (intel/Igvtg-xen
#: 4bc17c1aef) and made MEMORY unlimited (62c6a69f4b, 5dc78620da).
MAX_NR_IO_RANGES = 256

CF8_PORT = 0xCF8

#: An x86 I/O port number is 16 bits (IN/OUT take it from DX or an imm8).
MAX_IO_PORT = 0xFFFF

CFC_PORT = 0xCFC


class RangeType(IntEnum):
    """``HVMOP_IO_RANGE_*`` (xen/include/public/hvm/hvm_op.h @4.6)."""

    PORT = 0
    MEMORY = 1
    PCI = 2
    #: f5a32c5b8e only; reverted by 19e5e78324, never shipped.
    WP_MEM = 3


class IoreqType(IntEnum):
    """``IOREQ_TYPE_*`` (xen/include/public/hvm/ioreq.h @4.6)."""

    PIO = 0
    COPY = 1
    PCI_CONFIG = 2


class P2mType(IntEnum):
    """The p2m types that matter here (xen/include/asm-x86/p2m.h @4.6, line 74)."""

    RAM_RW = 0
    #: Type 15: ``p2m_mmio_write_dm`` in 4.6, renamed ``p2m_ioreq_server`` by cb34624af5.
    WRITE_DM = 15


def pci_sbdf(bus: int, dev: int, fn: int, seg: int = 0) -> int:
    """``HVMOP_PCI_SBDF(seg, bus, dev, fn)``: ``seg<<16 | bus<<8 | dev<<3 | fn``."""
    return (seg << 16) | ((bus & 0xFF) << 8) | ((dev & 0x1F) << 3) | (fn & 7)


_PCI_SLOT = re.compile(r"([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-9a-fA-F])")


@dataclass(frozen=True)
class PciSlot:
    """A PCI device address on segment 0 (CF8 can only address segment 0)."""

    bus: int
    dev: int
    fn: int

    @property
    def sbdf(self) -> int:
        return pci_sbdf(self.bus, self.dev, self.fn)

    def __str__(self) -> str:
        return f"{self.bus:02x}:{self.dev:02x}.{self.fn:x}"


def parse_pci_slot(value: Any) -> PciSlot:
    """``"bus:dev.fn"`` in hex, e.g. ``"00:02.0"``; ValueError says what is wrong."""
    if not isinstance(value, str):
        raise ValueError('expected a "bus:dev.fn" string in hex, e.g. "00:02.0"')
    match = _PCI_SLOT.fullmatch(value.strip())
    if match is None:
        raise ValueError('expected "bus:dev.fn" in hex, e.g. "00:02.0"')
    bus, dev, fn = (int(part, 16) for part in match.groups())
    if dev > 0x1F:
        raise ValueError(f"device {dev:#x} is above 0x1f (5 bits)")
    if fn > 7:
        raise ValueError(f"function {fn} is above 7 (3 bits)")
    return PciSlot(bus, dev, fn)


def format_ioreq(ioreq_type: IoreqType, addr: int) -> str:
    # A config-space address packs SBDF and register into fixed bit fields: show all 64.
    width = 16 if ioreq_type is IoreqType.PCI_CONFIG else 0
    return f"{ioreq_type.name} 0x{addr:0{width}x}"
