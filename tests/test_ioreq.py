"""Tests for :mod:`sim.xen.ioreq`: ioreq-server selection, the map/unmap hypercalls and the
three write-protection designs.

Xen sources (see ``shared/reference/xen-semantics.md`` §3 and §6):

* ``hvm_select_ioreq_server()``, ``xen/arch/x86/hvm/hvm.c`` @RELEASE-4.6.0, lines 2519-2605;
* ``hvmemul_do_io()``, ``xen/arch/x86/hvm/emulate.c`` @RELEASE-4.6.0 (from line 96) and
  @master (the p2m_ioreq_server bypass, line 211);
* ``hvm_map_io_range_to_ioreq_server()`` / ``hvm_unmap_io_range_from_ioreq_server()``,
  hvm.c @RELEASE-4.6.0, lines 1236-1332;
* commits f5a32c5b8e (WP_MEM, reverted by 19e5e78324), ca2b511d3f (p2m_ioreq_server
  claim), 60a56dc006 (direction-aware MMIO window) and 2d67a7a4d3 (AMD extended CF8).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.xen.abi import PAGE_SHIFT, IoreqType, RangeType, pci_sbdf
from sim.xen.ioreq import Access, Design, HypercallError, IoreqDomain, IoreqServer
from sim.xen.rangeset import RangesetImpl

BAR = (0xF000_0000, 0xF0FF_FFFF)


# -- helpers ------------------------------------------------------------------------------
def pio(addr: int, size: int = 1, *, write: bool = False, data: int | None = None) -> Access:
    return Access("pio", addr, size, write, data=data)


def mmio(
    addr: int, size: int = 4, *, write: bool = False, count: int = 1, df: bool = False
) -> Access:
    return Access("mmio", addr, size, write, count=count, df=df)


def cf8_value(bus: int, dev: int, fn: int, reg: int, *, enable: bool = True, ext: int = 0) -> int:
    """The dword a guest writes to 0xcf8 (PCI configuration mechanism #1)."""
    value = (bus << 16) | (dev << 11) | (fn << 8) | (reg & 0xFC) | (ext << 24)
    return value | (0x8000_0000 if enable else 0)


def latch_cf8(dom: IoreqDomain, value: int) -> None:
    route = dom.route(pio(0xCF8, 4, write=True, data=value))
    assert route.cf8_latched


def gpa(gfn: int, offset: int = 0) -> int:
    return (gfn << PAGE_SHIFT) | offset


# -- selection: hvm_select_ioreq_server() ----------------------------------------------
def test_no_servers_routes_to_null_handler() -> None:
    """hvm.c @RELEASE-4.6.0, hvm_select_ioreq_server(): an empty ioreq_server list returns
    NULL, and hvmemul_do_io() (emulate.c @4.6) then uses the null handler."""
    dom = IoreqDomain()
    for access in (pio(0x3F8), mmio(0xFEB0_0000, write=True)):
        route = dom.route(access)
        assert route.handler == "none"
        assert route.server is None
        assert route.tried == ()
        assert route.visits == 0


def test_newest_server_is_tried_first() -> None:
    """hvm.c @RELEASE-4.6.0 line 1132: hvm_create_ioreq_server() uses list_add(), and the
    selector walks the list from the head, so the most recently created server wins."""
    dom = IoreqDomain()
    old = dom.create_server("old")
    new = dom.create_server("new")
    for server in (old, new):
        dom.map_io_range(server, RangeType.PORT, 0x100, 0x1FF)
    route = dom.route(pio(0x150))
    assert route.handler == "new"
    assert route.server is new
    assert [name for name, _ in route.tried] == ["new"]
    newest = dom.create_server("newest")
    dom.map_io_range(newest, RangeType.PORT, 0x100, 0x1FF)
    assert dom.route(pio(0x150)).handler == "newest"


def test_first_match_wins_on_overlap() -> None:
    """hvm.c @RELEASE-4.6.0, hvm_select_ioreq_server(): the first server (newest first)
    whose rangeset contains the access is returned; ranges of different servers may
    overlap and there is no priority field."""
    dom = IoreqDomain()
    wide = dom.create_server("wide")
    narrow = dom.create_server("narrow")
    dom.map_io_range(wide, RangeType.MEMORY, 0x1000, 0x1FFF)
    dom.map_io_range(narrow, RangeType.MEMORY, 0x1800, 0x18FF)
    inside_both = dom.route(mmio(0x1810))
    assert inside_both.handler == "narrow"
    assert [name for name, _ in inside_both.tried] == ["narrow"]
    only_wide = dom.route(mmio(0x1010))
    assert only_wide.handler == "wide"
    assert only_wide.tried == (("narrow", 1), ("wide", 1))
    assert only_wide.visits == 2


def test_default_server_skipped_in_loop_and_used_as_fallback() -> None:
    """hvm.c @RELEASE-4.6.0, hvm_select_ioreq_server(): the loop skips
    ``default_ioreq_server`` and returns it only when no other server matches."""
    dom = IoreqDomain()
    gvt = dom.create_server("gvt")
    dom.create_server("qemu", default=True)  # newest, yet never tried in the loop
    dom.map_io_range(gvt, RangeType.PORT, 0x100, 0x10F)
    hit = dom.route(pio(0x104, 2))
    assert hit.handler == "gvt"
    assert [name for name, _ in hit.tried] == ["gvt"]
    miss = dom.route(pio(0x3F8))
    assert miss.handler == "qemu"
    assert miss.server is dom.default_server
    assert [name for name, _ in miss.tried] == ["gvt"]
    assert miss.ioreq_type is IoreqType.PIO
    only_default = IoreqDomain()
    only_default.create_server("qemu", default=True)
    route = only_default.route(mmio(0x1234))
    assert route.handler == "qemu"
    assert route.tried == ()


def test_disabled_servers_are_skipped() -> None:
    """hvm.c @RELEASE-4.6.0, hvm_select_ioreq_server(): a server that is not ``enabled``
    (HVMOP_set_ioreq_server_state) is skipped."""
    dom = IoreqDomain()
    on = dom.create_server("on")
    off = dom.create_server("off", enabled=False)
    for server in (on, off):
        dom.map_io_range(server, RangeType.PORT, 0x60, 0x64)
    route = dom.route(pio(0x60))
    assert route.handler == "on"
    assert [name for name, _ in route.tried] == ["on"]
    on.enabled = False
    assert dom.route(pio(0x60)).handler == "none"
    off.enabled = True
    assert dom.route(pio(0x60)).handler == "off"


def test_no_match_and_no_default_is_null_handler() -> None:
    """hvm.c @RELEASE-4.6.0: with no match and no default server the selector returns
    NULL; emulate.c @4.6 hvmemul_do_io() then uses null_handler (reads ~0, writes
    dropped). Every enabled server was still queried."""
    dom = IoreqDomain()
    a = dom.create_server("a")
    b = dom.create_server("b")
    dom.map_io_range(a, RangeType.PORT, 0x10, 0x1F)
    dom.map_io_range(b, RangeType.MEMORY, 0x10, 0x1F)
    route = dom.route(pio(0x3F8))
    assert route.handler == "none"
    assert route.server is None
    assert [name for name, _ in route.tried] == ["b", "a"]
    assert route.visits == 0 + 1  # b's port set is empty; a's has one node


# -- PIO window -------------------------------------------------------------------------
def test_pio_window_must_lie_in_one_range() -> None:
    """hvm.c @RELEASE-4.6.0, hvm_select_ioreq_server(): PORT uses
    ``rangeset_contains_range(r, addr, addr + size - 1)``: an access straddling two
    non-adjacent ranges misses."""
    dom = IoreqDomain()
    srv = dom.create_server("srv")
    dom.map_io_range(srv, RangeType.PORT, 0x100, 0x103)
    dom.map_io_range(srv, RangeType.PORT, 0x105, 0x107)
    assert dom.route(pio(0x100, 4)).handler == "srv"
    assert dom.route(pio(0x103, 1)).handler == "srv"
    assert dom.route(pio(0x102, 2)).handler == "srv"
    assert dom.route(pio(0x102, 4)).handler == "none"  # 0x102..0x105 crosses the hole
    assert dom.route(pio(0x103, 2)).handler == "none"
    assert dom.route(pio(0x104, 1)).handler == "none"
    # A rep INS/OUTS is checked over one element only: count plays no part for PORT.
    assert dom.route(Access("pio", 0x103, 1, False, count=4)).handler == "srv"


def test_pio_adjacent_maps_merge_so_straddling_access_hits() -> None:
    """hvm.c @RELEASE-4.6.0 map + rangeset.c rangeset_add_range(): adjacent mapped ranges
    merge into one node, so an access across the former boundary is inside one range."""
    dom = IoreqDomain()
    srv = dom.create_server("srv")
    dom.map_io_range(srv, RangeType.PORT, 0x100, 0x103)
    dom.map_io_range(srv, RangeType.PORT, 0x104, 0x107)
    assert srv.rangesets[RangeType.PORT].ranges() == [(0x100, 0x107)]
    assert dom.route(pio(0x102, 4)).handler == "srv"
    assert dom.route(pio(0x106, 4)).handler == "none"  # 0x106..0x109 runs off the end


# -- MMIO window ------------------------------------------------------------------------
def test_mmio_window_covers_size_times_count() -> None:
    """hvm.c @RELEASE-4.6.0, hvm_select_ioreq_server(): MEMORY uses
    ``rangeset_contains_range(r, addr, addr + size * count - 1)``."""
    dom = IoreqDomain()
    srv = dom.create_server("srv")
    dom.map_io_range(srv, RangeType.MEMORY, 0x1000, 0x1FFF)
    assert dom.route(mmio(0x1FF0, 4, count=4)).handler == "srv"  # ends at 0x1fff
    assert dom.route(mmio(0x1FF0, 4, count=5)).handler == "none"  # ends at 0x2003
    assert dom.route(mmio(0x1FF8, 8)).handler == "srv"
    assert dom.route(mmio(0x1FFC, 8)).handler == "none"
    route = dom.route(mmio(0x1000, 4, write=True))
    assert route.ioreq_type is IoreqType.COPY
    assert route.addr == 0x1000


def test_mmio_df_ignored_under_xen_46() -> None:
    """hvm.c @RELEASE-4.6.0, hvm_select_ioreq_server(): the MEMORY window ignores the
    direction flag, so a backwards rep op is checked over ``[addr, addr+size*count-1]``."""
    dom = IoreqDomain(version="4.6")
    srv = dom.create_server("srv")
    dom.map_io_range(srv, RangeType.MEMORY, 0x1000, 0x1FFF)
    # Bytes really touched: 0xff8..0x1007 (below the range), yet 4.6 checks 0x1004..0x1013.
    assert dom.route(mmio(0x1004, 4, count=4, df=True)).handler == "srv"
    # Bytes really touched: 0x1ff0..0x1fff (inside), yet 4.6 checks 0x1ffc..0x200b.
    assert dom.route(mmio(0x1FFC, 4, count=4, df=True)).handler == "none"


def test_mmio_df_respected_under_xen_412() -> None:
    """60a56dc006 (RELEASE-4.12.0), hvm_mmio_first_byte()/hvm_mmio_last_byte(): with df
    set the window is ``[addr - (count-1)*size, addr + size - 1]``."""
    dom = IoreqDomain(version="4.12")
    srv = dom.create_server("srv")
    dom.map_io_range(srv, RangeType.MEMORY, 0x1000, 0x1FFF)
    assert dom.route(mmio(0x1004, 4, count=4, df=True)).handler == "none"
    assert dom.route(mmio(0x1FFC, 4, count=4, df=True)).handler == "srv"
    assert dom.route(mmio(0x100C, 4, count=4, df=True)).handler == "srv"  # 0x1000..0x100f
    # Forward rep ops are unchanged.
    assert dom.route(mmio(0x1FF0, 4, count=4)).handler == "srv"
    assert dom.route(mmio(0x1FF0, 4, count=5)).handler == "none"


# -- CF8/CFC -----------------------------------------------------------------------------
def pci_domain(vendor: Literal["intel", "amd"] = "intel") -> tuple[IoreqDomain, IoreqServer]:
    dom = IoreqDomain(vendor=vendor)
    dom.create_server("qemu", default=True)
    gvt = dom.create_server("gvt")
    dom.map_io_range(gvt, RangeType.PCI, pci_sbdf(0, 2, 0), pci_sbdf(0, 2, 0))
    return dom, gvt


def test_cf8_latched_only_by_4_byte_writes() -> None:
    """hvm.c @RELEASE-4.6.0 line 689, hvm_access_cf8(): registered on 0xcf8 length 4; it
    stores the value only for ``dir == IOREQ_WRITE && bytes == 4`` and then declines, so
    the CF8 write itself is still forwarded to a device model."""
    dom, _ = pci_domain()
    value = cf8_value(0, 2, 0, 0x10)
    route = dom.route(pio(0xCF8, 4, write=True, data=value))
    assert route.cf8_latched
    assert dom.pci_cf8 == value
    assert route.handler == "qemu"  # forwarded as plain PIO to 0xcf8
    assert route.ioreq_type is IoreqType.PIO
    other = cf8_value(0, 3, 0, 0x20)
    two_byte = dom.route(pio(0xCF8, 2, write=True, data=other & 0xFFFF))
    assert not two_byte.cf8_latched
    read = dom.route(pio(0xCF8, 4, write=False, data=other))
    assert not read.cf8_latched
    off_port = dom.route(pio(0xCF9, 4, write=True, data=other))
    assert not off_port.cf8_latched
    assert dom.pci_cf8 == value


def test_cfc_decodes_to_pci_config() -> None:
    """hvm.c @RELEASE-4.6.0, hvm_select_ioreq_server(): PIO to 0xcfc..0xcff with
    CF8_ENABLED decodes CF8_BDF and CF8_ADDR_LO; on a PCI-rangeset hit the request is
    rewritten to IOREQ_TYPE_PCI_CONFIG with ``addr = sbdf << 32 | reg | (port & 3)``."""
    dom, gvt = pci_domain()
    sbdf = pci_sbdf(0, 2, 0)
    assert sbdf == 0x10
    latch_cf8(dom, cf8_value(0, 2, 0, 0x10))
    route = dom.route(pio(0xCFC, 4))
    assert route.handler == "gvt"
    assert route.server is gvt
    assert route.ioreq_type is IoreqType.PCI_CONFIG
    assert route.addr == (sbdf << 32) | 0x10
    assert dom.route(pio(0xCFE, 2, write=True, data=0x1)).addr == (sbdf << 32) | 0x12
    assert dom.route(pio(0xCFF, 1)).addr == (sbdf << 32) | 0x13
    # bus/dev/fn all land in the right bits.
    dom2 = IoreqDomain()
    srv = dom2.create_server("srv")
    sbdf2 = pci_sbdf(0x5A, 0x1F, 0x7)
    assert sbdf2 == (0x5A << 8) | (0x1F << 3) | 0x7
    dom2.map_io_range(srv, RangeType.PCI, sbdf2, sbdf2)
    latch_cf8(dom2, cf8_value(0x5A, 0x1F, 0x7, 0xFC))
    route2 = dom2.route(pio(0xCFD, 1))
    assert route2.handler == "srv"
    assert route2.addr == (sbdf2 << 32) | 0xFD


def test_pci_decode_bypasses_port_rangeset() -> None:
    """hvm.c @RELEASE-4.6.0: once decoded, the type is IOREQ_TYPE_PCI_CONFIG and only the
    PCI rangeset is consulted; a server mapping ports 0xcf8-0xcff does not get it."""
    dom, _ = pci_domain()
    ports = dom.create_server("ports")
    dom.map_io_range(ports, RangeType.PORT, 0xCF8, 0xCFF)
    latch_cf8(dom, cf8_value(0, 2, 0, 0x10))
    assert dom.route(pio(0xCFC, 4)).handler == "gvt"
    latch_cf8(dom, cf8_value(0, 2, 0, 0x10, enable=False))
    assert dom.route(pio(0xCFC, 4)).handler == "ports"


def test_amd_extended_register_bits_only_for_amd() -> None:
    """2d67a7a4d3 (in RELEASE-4.6.0), hvm_select_ioreq_server(): CF8_ADDR_HI (cf8 bits
    27:24 -> register bits 11:8) is ORed in only on an AMD family 10h-17h host with
    MSR_AMD64_NB_CFG bit 46 set (``vendor="amd"`` here)."""
    value = cf8_value(0, 2, 0, 0x40, ext=0x3)
    sbdf = pci_sbdf(0, 2, 0)
    amd, _ = pci_domain("amd")
    latch_cf8(amd, value)
    assert amd.route(pio(0xCFC, 4)).addr == (sbdf << 32) | 0x340
    intel, _ = pci_domain("intel")
    latch_cf8(intel, value)
    assert intel.route(pio(0xCFC, 4)).addr == (sbdf << 32) | 0x40


def test_unmatched_config_cycle_goes_to_default_as_plain_pio() -> None:
    """hvm.c @RELEASE-4.6.0: the rewrite happens only on a PCI-rangeset hit, so an
    unclaimed SBDF reaches the default server as a plain PIO to 0xcfc..0xcff."""
    dom, _ = pci_domain()
    latch_cf8(dom, cf8_value(0, 3, 0, 0x10))  # device 3: nobody claims it
    route = dom.route(pio(0xCFD, 1))
    assert route.handler == "qemu"
    assert route.ioreq_type is IoreqType.PIO
    assert route.addr == 0xCFD
    no_default = IoreqDomain()
    srv = no_default.create_server("srv")
    no_default.map_io_range(srv, RangeType.PCI, pci_sbdf(0, 2, 0), pci_sbdf(0, 2, 0))
    latch_cf8(no_default, cf8_value(0, 3, 0, 0x10))
    assert no_default.route(pio(0xCFC, 4)).handler == "none"


def test_cf8_enable_bit_clear_is_plain_pio() -> None:
    """hvm.c @RELEASE-4.6.0: without CF8_ENABLED (bit 31) there is no decode; the access is
    an ordinary PIO checked against PORT rangesets."""
    dom, _ = pci_domain()
    latch_cf8(dom, cf8_value(0, 2, 0, 0x10, enable=False))
    route = dom.route(pio(0xCFC, 4))
    assert route.handler == "qemu"
    assert route.ioreq_type is IoreqType.PIO
    assert route.addr == 0xCFC


# -- map / unmap hypercalls --------------------------------------------------------------
def test_map_overlap_is_eexist() -> None:
    """hvm.c @RELEASE-4.6.0, hvm_map_io_range_to_ioreq_server(): -EEXIST when
    rangeset_overlaps_range() finds any overlap in that server's set of that type."""
    dom = IoreqDomain()
    a = dom.create_server("a")
    b = dom.create_server("b")
    dom.map_io_range(a, RangeType.MEMORY, 0x1000, 0x1FFF)
    for s, e in [(0x1000, 0x1FFF), (0x0F00, 0x1000), (0x1FFF, 0x2FFF), (0x1100, 0x1200)]:
        with pytest.raises(HypercallError) as info:
            dom.map_io_range(a, RangeType.MEMORY, s, e)
        assert info.value.errno_name == "EEXIST"
    assert a.rangesets[RangeType.MEMORY].ranges() == [(0x1000, 0x1FFF)]
    dom.map_io_range(a, RangeType.PORT, 0x1000, 0x1FFF)  # other type: no conflict
    dom.map_io_range(b, RangeType.MEMORY, 0x1000, 0x1FFF)  # other server: no conflict


def test_map_adjacent_is_fine_and_merges() -> None:
    """hvm.c @RELEASE-4.6.0 map + rangeset_add_range(): adjacent is not an overlap, and
    the ranges merge into one node."""
    dom = IoreqDomain()
    srv = dom.create_server("srv")
    dom.map_io_range(srv, RangeType.MEMORY, 0x1000, 0x1FFF)
    dom.map_io_range(srv, RangeType.MEMORY, 0x2000, 0x2FFF)
    dom.map_io_range(srv, RangeType.MEMORY, 0x0000, 0x0FFF)
    assert srv.rangesets[RangeType.MEMORY].ranges() == [(0x0, 0x2FFF)]
    assert dom.range_count(srv) == 1


def test_map_at_limit_is_enomem() -> None:
    """hvm.c @RELEASE-4.6.0 map: rangeset_add_range()'s -ENOMEM when the
    rangeset_limit(MAX_NR_IO_RANGES) budget is spent; extending a range still works, and
    the in-front-of-adjacent quirk of rangeset.c fails too."""
    dom = IoreqDomain(max_nr_io_ranges=2)
    srv = dom.create_server("srv")
    dom.map_io_range(srv, RangeType.PORT, 0x10, 0x1F)
    dom.map_io_range(srv, RangeType.PORT, 0x40, 0x4F)
    with pytest.raises(HypercallError) as info:
        dom.map_io_range(srv, RangeType.PORT, 0x80, 0x8F)
    assert info.value.errno_name == "ENOMEM"
    with pytest.raises(HypercallError) as quirk:
        dom.map_io_range(srv, RangeType.PORT, 0x38, 0x3F)  # just in front of 0x40
    assert quirk.value.errno_name == "ENOMEM"
    assert srv.rangesets[RangeType.PORT].ranges() == [(0x10, 0x1F), (0x40, 0x4F)]
    dom.map_io_range(srv, RangeType.PORT, 0x20, 0x2F)  # right-adjacent extension
    dom.map_io_range(srv, RangeType.PORT, 0x30, 0x3F)  # fills the gap
    assert srv.rangesets[RangeType.PORT].ranges() == [(0x10, 0x4F)]
    # The limit is per (server, type): MEMORY has its own budget.
    dom.map_io_range(srv, RangeType.MEMORY, 0x10, 0x1F)
    dom.map_io_range(srv, RangeType.MEMORY, 0x40, 0x4F)


def test_unmap_requires_span_inside_one_range() -> None:
    """hvm.c @RELEASE-4.6.0, hvm_unmap_io_range_from_ioreq_server(): -ENOENT unless
    rangeset_contains_range(start, end)."""
    dom = IoreqDomain()
    srv = dom.create_server("srv")
    dom.map_io_range(srv, RangeType.MEMORY, 0x1000, 0x1FFF)
    dom.map_io_range(srv, RangeType.MEMORY, 0x3000, 0x3FFF)
    for s, e in [(0x1000, 0x2000), (0x0FFF, 0x1000), (0x1F00, 0x30FF), (0x2000, 0x2FFF)]:
        with pytest.raises(HypercallError) as info:
            dom.unmap_io_range(srv, RangeType.MEMORY, s, e)
        assert info.value.errno_name == "ENOENT"
    assert srv.rangesets[RangeType.MEMORY].ranges() == [(0x1000, 0x1FFF), (0x3000, 0x3FFF)]
    dom.unmap_io_range(srv, RangeType.MEMORY, 0x1000, 0x1FFF)
    dom.unmap_io_range(srv, RangeType.MEMORY, 0x3000, 0x30FF)
    assert srv.rangesets[RangeType.MEMORY].ranges() == [(0x3100, 0x3FFF)]


def test_unmap_split_at_full_budget_is_enomem() -> None:
    """hvm.c @RELEASE-4.6.0 unmap -> rangeset_remove_range(): the split allocates a node,
    so at the limit the unmap fails with -ENOMEM and the set is unchanged."""
    dom = IoreqDomain(max_nr_io_ranges=2)
    srv = dom.create_server("srv")
    dom.map_io_range(srv, RangeType.PORT, 0x10, 0x1F)
    dom.map_io_range(srv, RangeType.PORT, 0x40, 0x4F)
    with pytest.raises(HypercallError) as info:
        dom.unmap_io_range(srv, RangeType.PORT, 0x14, 0x17)
    assert info.value.errno_name == "ENOMEM"
    assert srv.rangesets[RangeType.PORT].ranges() == [(0x10, 0x1F), (0x40, 0x4F)]
    dom.unmap_io_range(srv, RangeType.PORT, 0x10, 0x13)  # a trim is fine
    assert srv.rangesets[RangeType.PORT].ranges() == [(0x14, 0x1F), (0x40, 0x4F)]


def test_map_and_unmap_refuse_bad_requests() -> None:
    """hvm.c @RELEASE-4.6.0 map/unmap: the default server is not found among the
    non-default servers (-ENOENT); WP_MEM exists only under f5a32c5b8e (-EINVAL for an
    unknown type otherwise). ``start > end`` is only an ASSERT in 4.6 (XSA-238): the
    model refuses to guess what a release build does."""
    dom = IoreqDomain()
    default = dom.create_server("qemu", default=True)
    srv = dom.create_server("srv")
    cases = [
        (default, RangeType.PORT, 0x10, 0x1F, "ENOENT"),
        (srv, RangeType.WP_MEM, 0x10, 0x1F, "EINVAL"),
    ]
    for server, rtype, s, e, errno_name in cases:
        for call in (dom.map_io_range, dom.unmap_io_range):
            with pytest.raises(HypercallError) as info:
                call(server, rtype, s, e)
            assert info.value.errno_name == errno_name
    for call in (dom.map_io_range, dom.unmap_io_range):
        with pytest.raises(ValueError, match="XSA-238"):
            call(srv, RangeType.PORT, 0x1F, 0x10)


@pytest.mark.parametrize(("version", "errno_name"), [("4.12", "EINVAL"), ("master", "EINVAL")])
def test_start_above_end_is_einval_from_4_10(version: str, errno_name: str) -> None:
    """d59e55b018 (RELEASE-4.10.0): map/unmap return -EINVAL for start > end
    (ioreq.c @RELEASE-4.12.0 lines 1007 and 1059; xen/common/ioreq.c @master 850, 902)."""
    dom = IoreqDomain(version=version)
    srv = dom.create_server("srv")
    for call in (dom.map_io_range_rc, dom.unmap_io_range_rc):
        assert call(srv, RangeType.PORT, 0x1F, 0x10) == (errno_name, 0)


def test_map_visits_hand_computed() -> None:
    """hvm.c @RELEASE-4.6.0 map: rangeset_overlaps_range() does find_range(e), then
    rangeset_add_range() does find_range(s) and find_range(e), all on the list as it was
    before the add: visits(e) + visits(s) + visits(e)."""
    dom = IoreqDomain()
    srv = dom.create_server("srv")
    assert dom.map_io_range(srv, RangeType.MEMORY, 0x10, 0x1F) == 0  # empty set
    assert dom.map_io_range(srv, RangeType.MEMORY, 0x30, 0x3F) == 1 + 1 + 1  # N=1
    assert dom.map_io_range(srv, RangeType.MEMORY, 0x50, 0x5F) == 2 + 2 + 2  # k=2, N=2
    # Now [0x10,0x1f] [0x30,0x3f] [0x50,0x5f]:
    assert dom.map_io_range(srv, RangeType.MEMORY, 0x00, 0x05) == 1 + 1 + 1  # below all
    # Now 4 ranges; [0x42,0x47]: k=3 for both ends -> min(4, 4) = 4 each.
    assert dom.map_io_range(srv, RangeType.MEMORY, 0x42, 0x47) == 4 + 4 + 4
    # Now 5 ranges: 0x00 0x10 0x30 0x42 0x50; [0x22,0x28]: k=2 -> 3 each.
    assert dom.map_io_range(srv, RangeType.MEMORY, 0x22, 0x28) == 3 + 3 + 3
    # Now 6 ranges (0x22 is not adjacent to 0x1f): [0x68,0x6f] is above all: 6 each.
    assert len(srv.rangesets[RangeType.MEMORY]) == 6
    assert dom.map_io_range(srv, RangeType.MEMORY, 0x68, 0x6F) == 6 + 6 + 6
    assert len(srv.rangesets[RangeType.MEMORY]) == 7
    # -EEXIST reports the overlap check's find_range(e) only: 0x35 is in range 4 of 7.
    with pytest.raises(HypercallError) as info:
        dom.map_io_range(srv, RangeType.MEMORY, 0x35, 0x35)
    assert info.value.visits == 5
    # Only find_range(e) counts, even when s lies much further to the front.
    for s, e, visits in [(0x00, 0x7F, 7), (0x06, 0x11, 3), (0x06, 0x42, 6)]:
        with pytest.raises(HypercallError) as info:
            dom.map_io_range(srv, RangeType.MEMORY, s, e)
        assert info.value.errno_name == "EEXIST"
        assert info.value.visits == visits


def test_unmap_visits_hand_computed() -> None:
    """hvm.c @RELEASE-4.6.0 unmap: rangeset_contains_range() does find_range(s), then
    rangeset_remove_range() does find_range(s) and find_range(e)."""
    dom = IoreqDomain()
    srv = dom.create_server("srv")
    for base in (0x10, 0x30, 0x50):
        dom.map_io_range(srv, RangeType.PORT, base, base + 0xF)
    assert dom.unmap_io_range(srv, RangeType.PORT, 0x34, 0x36) == 3 + 3 + 3
    # Now 0x10 0x30 0x37 0x50: [0x10,0x1f] is range 1 -> 2 visits each.
    assert dom.unmap_io_range(srv, RangeType.PORT, 0x10, 0x1F) == 2 + 2 + 2
    # Now 0x30 0x37 0x50. -ENOENT reports the containment check's find_range(s) only.
    with pytest.raises(HypercallError) as info:
        dom.unmap_io_range(srv, RangeType.PORT, 0x34, 0x5F)
    assert info.value.errno_name == "ENOENT"
    assert info.value.visits == 2


# -- write protection designs -------------------------------------------------------------
def wp_domain(design: Design, limit: int | None = 256) -> tuple[IoreqDomain, IoreqServer]:
    dom = IoreqDomain(design=design, max_nr_io_ranges=limit)
    gvt = dom.create_server("gvt")
    dom.map_io_range(gvt, RangeType.MEMORY, *BAR)
    return dom, gvt


@pytest.mark.parametrize("pages", [0, 1, 5, 40])
def test_xen46_wp_pages_share_memory_list_with_bars(pages: int) -> None:
    """2015 XenGT on Xen 4.6 (XenGT-Preview-kernel xengt.c, hvm_wp_page_to_ioreq_server):
    each protected page is a MEMORY range of the same server, so with p separate pages
    below the BAR, a BAR access is a lookup in the last of p + 1 nodes: p + 1 visits
    (find_range(), rangeset.c @4.6)."""
    dom, gvt = wp_domain(Design.XEN_46)
    for i in range(pages):
        dom.write_protect(gvt, 0x100 + 2 * i, 0x100 + 2 * i)
    assert len(gvt.rangesets[RangeType.MEMORY]) == pages + 1
    route = dom.route(mmio(BAR[0] + 0x10, write=True))
    assert route.handler == "gvt"
    assert route.visits == pages + 1
    assert route.p2m_lookups == 0
    if pages:
        page = dom.route(mmio(gpa(0x100, 0x8), 8, write=True))
        assert page.handler == "gvt"
        assert page.ioreq_type is IoreqType.COPY


def test_xen46_neighbouring_wp_pages_merge() -> None:
    """rangeset.c @RELEASE-4.6.0, rangeset_add_range(): page byte ranges
    ``[gfn<<12, gfn<<12|0xfff]`` of neighbouring gfns are adjacent and merge into one node."""
    dom, gvt = wp_domain(Design.XEN_46)
    for gfn in (0x100, 0x101, 0x102):
        dom.write_protect(gvt, gfn, gfn)
    memory = gvt.rangesets[RangeType.MEMORY]
    assert memory.ranges() == [(gpa(0x100), gpa(0x102, 0xFFF)), BAR]
    assert all(dom.is_write_protected(g) for g in (0x100, 0x101, 0x102))
    assert not dom.is_write_protected(0x103)
    # An access spanning two protected pages lies inside the merged node.
    assert dom.route(mmio(gpa(0x100, 0xFFC), 8, write=True)).handler == "gvt"


def test_xen46_wp_budget_exhaustion_is_enomem_and_page_stays_writable() -> None:
    """hvm.c @RELEASE-4.6.0 map -> rangeset_add_range() -ENOMEM at MAX_NR_IO_RANGES: the
    device model cannot track the page, so it keeps its RAM type (not write-protected)."""
    dom, gvt = wp_domain(Design.XEN_46, limit=2)
    dom.write_protect(gvt, 0x100, 0x100)
    with pytest.raises(HypercallError) as info:
        dom.write_protect(gvt, 0x200, 0x200)
    assert info.value.errno_name == "ENOMEM"
    assert dom.is_write_protected(0x100)
    assert not dom.is_write_protected(0x200)
    assert dom.route(mmio(gpa(0x200), write=True)).handler == "none"
    dom.write_protect(gvt, 0x101, 0x101)  # a neighbour merges: no new node needed
    assert dom.is_write_protected(0x101)


def test_wp_split_looks_up_wp_mem_by_gfn() -> None:
    """f5a32c5b8e (reverted by 19e5e78324), hvm_select_ioreq_server(): every COPY access
    looks up the p2m type of PFN_DOWN(addr); a p2m_mmio_write_dm page is checked with
    rangeset_contains_singleton(WP_MEM, gfn), so BAR lookups never see the pages."""
    dom, gvt = wp_domain(Design.WP_SPLIT)
    gfns = [0x100 + 2 * i for i in range(40)]
    for gfn in gfns:
        dom.write_protect(gvt, gfn, gfn)
    assert gvt.rangesets[RangeType.MEMORY].ranges() == [BAR]
    assert gvt.rangesets[RangeType.WP_MEM].ranges() == [(g, g) for g in gfns]
    bar = dom.route(mmio(BAR[0] + 0x10, write=True))
    assert bar.handler == "gvt"
    assert bar.visits == 1
    assert bar.p2m_lookups == 1
    page = dom.route(mmio(gpa(gfns[2], 0x10), write=True))
    assert page.handler == "gvt"
    assert page.p2m_lookups == 1
    assert page.visits == dom.servers[0].rangesets[RangeType.WP_MEM].lookup_visits(gfns[2])
    assert page.visits == 4  # the third singleton of 40: i + 1
    # An unprotected RAM page is looked up in MEMORY and misses.
    ram = dom.route(mmio(gpa(0x101), write=True))
    assert ram.handler == "none"
    assert ram.p2m_lookups == 1


def test_wp_split_page_not_served_through_memory_set() -> None:
    """f5a32c5b8e: for a p2m_mmio_write_dm page the type becomes WP_MEM, so only WP_MEM
    rangesets are consulted, even if another server maps the bytes as MEMORY."""
    dom, gvt = wp_domain(Design.WP_SPLIT)
    other = dom.create_server("other")
    dom.map_io_range(other, RangeType.MEMORY, gpa(0x100), gpa(0x100, 0xFFF))
    assert dom.route(mmio(gpa(0x100), write=True)).handler == "other"
    dom.write_protect(gvt, 0x100, 0x100)
    route = dom.route(mmio(gpa(0x100), write=True))
    assert route.handler == "gvt"
    assert [name for name, _ in route.tried] == ["other", "gvt"]


def test_p2m_ioreq_server_write_goes_to_claimer_without_lookup() -> None:
    """ca2b511d3f (RELEASE-4.9.0) and hvmemul_do_io() (emulate.c @master line 211): a
    write to a p2m_ioreq_server page goes to the claiming server with no rangeset lookup;
    the read half of a read-modify-write is emulated from RAM."""
    dom, gvt = wp_domain(Design.P2M_IOREQ_SERVER)
    for i in range(40):
        assert dom.write_protect(gvt, 0x100 + 2 * i, 0x100 + 2 * i) == 0
    assert gvt.rangesets[RangeType.MEMORY].ranges() == [BAR]
    write = dom.route(mmio(gpa(0x102, 0x10), write=True))
    assert write.handler == "gvt"
    assert write.server is gvt
    assert write.visits == 0
    assert write.tried == ()
    assert write.p2m_lookups == 1
    read = dom.route(mmio(gpa(0x102, 0x10), write=False))
    assert read.handler == "ram"
    assert read.server is None
    assert read.visits == 0
    bar = dom.route(mmio(BAR[0] + 0x10, write=True))
    assert bar.handler == "gvt"
    assert bar.visits == 1
    assert bar.p2m_lookups == 1


def test_p2m_ioreq_server_second_claimer_is_ebusy() -> None:
    """ca2b511d3f, p2m_set_ioreq_server(): only one server may claim p2m_ioreq_server;
    another server's claim is -EBUSY and its pages are not protected."""
    dom, gvt = wp_domain(Design.P2M_IOREQ_SERVER)
    dom.write_protect(gvt, 0x100, 0x100)
    other = dom.create_server("other")
    with pytest.raises(HypercallError) as info:
        dom.write_protect(other, 0x300, 0x300)
    assert info.value.errno_name == "EBUSY"
    assert not dom.is_write_protected(0x300)
    assert dom.p2m_claimer is gvt
    dom.write_protect(gvt, 0x300, 0x300)  # the owner may keep adding pages
    assert dom.route(mmio(gpa(0x300), write=True)).handler == "gvt"


def test_p2m_ioreq_server_never_fails_for_budget() -> None:
    """ca2b511d3f / cb34624af5: page membership lives in the p2m type, not a rangeset, so
    MAX_NR_IO_RANGES does not bound how many pages can be protected."""
    dom, gvt = wp_domain(Design.P2M_IOREQ_SERVER, limit=2)
    for i in range(300):
        dom.write_protect(gvt, 0x100 + 2 * i, 0x100 + 2 * i)
    assert all(dom.is_write_protected(0x100 + 2 * i) for i in range(300))
    assert dom.range_count(gvt) == 1  # just the BAR


@pytest.mark.parametrize("design", list(Design))
def test_unprotect_returns_page_to_ram(design: Design) -> None:
    """Unprotecting resets the p2m type and drops the page from the design's tracking."""
    dom, gvt = wp_domain(design)
    dom.write_protect(gvt, 0x100, 0x102)
    dom.unprotect(gvt, 0x101, 0x101)
    assert not dom.is_write_protected(0x101)
    assert dom.is_write_protected(0x100)
    assert dom.is_write_protected(0x102)
    handler = dom.route(mmio(gpa(0x101), write=True)).handler
    assert handler == "none"
    assert dom.route(mmio(gpa(0x102), write=True)).handler == "gvt"


@pytest.mark.parametrize("design", list(Design))
def test_route_fast_agrees_with_route(design: Design) -> None:
    """The model's hot path (route_fast) gives route()'s handler, server, visits and p2m
    lookups, and latches CF8 the same way (hvm_access_cf8, hvm.c @RELEASE-4.6.0 line 689)."""

    def build() -> IoreqDomain:
        dom, gvt = wp_domain(design)
        dom.create_server("qemu", default=True)
        dom.map_io_range(gvt, RangeType.PCI, pci_sbdf(0, 2, 0), pci_sbdf(0, 2, 0))
        dom.map_io_range(gvt, RangeType.PORT, 0x3B0, 0x3DF)
        for gfn in (0x100, 0x102, 0x103):
            dom.write_protect(gvt, gfn, gfn)
        return dom

    script = [
        pio(0xCF8, 4, write=True, data=cf8_value(0, 2, 0, 0x10)),
        pio(0xCFC, 4),
        pio(0xCF8, 4, write=True, data=cf8_value(0, 4, 0, 0x10)),
        pio(0xCFE, 2, write=True, data=7),
        pio(0x3C0),
        pio(0x3DE, 4),
        mmio(BAR[0] + 0x44, write=True),
        mmio(gpa(0x102, 0x8), 8, write=True),
        mmio(gpa(0x103), write=False),  # a read-modify-write's read half
        mmio(gpa(0x101), write=True),
        mmio(0xFEE0_0300, write=True),  # the vLAPIC's ICR: Xen's own emulator
    ]
    slow, fast = build(), build()
    for access in script:
        route = slow.route(access)
        handler, server, visits, p2m_lookups, emulators = fast.route_fast(access)
        assert (handler, server and server.name, visits, p2m_lookups, emulators) == (
            route.handler,
            route.server and route.server.name,
            route.visits,
            route.p2m_lookups,
            route.emulators_checked,
        )
        assert fast.pci_cf8 == slow.pci_cf8


# -- list vs rbtree vs brute force -----------------------------------------------------
Window = Literal["4.6", "4.12"]
PORT_BASE = 0x100  # 0x100..0x17f: no Xen emulator there, and no config decode
PORT_SPACE = 128
MEM_SPACE = 256


@dataclass
class ModelServer:
    name: str
    default: bool
    enabled: bool
    points: dict[RangeType, set[int]] = field(
        default_factory=lambda: {RangeType.PORT: set(), RangeType.MEMORY: set()}
    )


span_ops = st.tuples(
    st.sampled_from(["map", "unmap"]),
    st.sampled_from([RangeType.PORT, RangeType.MEMORY]),
    st.integers(0, MEM_SPACE - 1),
    st.integers(0, 24),
)

server_specs = st.lists(
    st.tuples(st.booleans(), st.lists(span_ops, max_size=8)),  # (enabled, operations)
    min_size=0,
    max_size=4,
)

accesses = st.builds(
    lambda kind, addr, size, count, df, write: (
        Access("pio", PORT_BASE + addr % PORT_SPACE, min(size, 4), write)
        if kind == "pio"
        else Access("mmio", addr, size, write, count=count, df=df)
    ),
    st.sampled_from(["pio", "mmio"]),
    st.integers(32, MEM_SPACE - 1),
    st.sampled_from([1, 2, 4, 8]),
    st.integers(1, 4),
    st.booleans(),
    st.booleans(),
)


def model_select(servers: list[ModelServer], access: Access, window: Window) -> str:
    """Brute-force selector: newest first, skip default/disabled, window inside one run."""
    if access.kind == "pio":
        rtype = RangeType.PORT
        first, last = access.addr, access.addr + access.size - 1
    else:
        rtype = RangeType.MEMORY
        if window == "4.12" and access.df:
            first = access.addr - (access.count - 1) * access.size
            last = access.addr + access.size - 1
        else:
            first, last = access.addr, access.addr + access.size * access.count - 1
    span = set(range(first, last + 1))
    for server in reversed(servers):
        if server.default or not server.enabled:
            continue
        # All points present == inside one maximal run of the server's mapped points.
        if span <= server.points[rtype]:
            return server.name
    default = [s.name for s in servers if s.default]
    return default[0] if default else "none"


@given(
    specs=server_specs,
    default_at=st.none() | st.integers(0, 4),
    limit=st.none() | st.integers(1, 4),
    window=st.sampled_from(["4.6", "4.12"]),
    probes=st.lists(accesses, min_size=1, max_size=12),
)
def test_list_and_rbtree_route_identically_and_match_brute_force(
    specs: list[tuple[bool, list[tuple[str, RangeType, int, int]]]],
    default_at: int | None,
    limit: int | None,
    window: Window,
    probes: list[Access],
) -> None:
    """hvm_select_ioreq_server() (hvm.c @RELEASE-4.6.0; ioreq.c @RELEASE-4.12.0) gives the
    same answer whichever rangeset implementation backs it, and equals a brute-force
    newest-first selector. 4.12 has no default server (2c257bd69a)."""
    if window == "4.12":
        default_at = None
    impls: tuple[RangesetImpl, ...] = ("list", "rbtree")
    doms = [IoreqDomain(impl=impl, max_nr_io_ranges=limit, version=window) for impl in impls]
    model: list[ModelServer] = []
    entries: list[tuple[bool, bool, list[tuple[str, RangeType, int, int]]]] = [
        (False, enabled, ops) for enabled, ops in specs
    ]
    if default_at is not None:
        entries.insert(min(default_at, len(entries)), (True, True, []))
    for i, (is_default, enabled, ops) in enumerate(entries):
        name = f"s{i}"
        handles = [d.create_server(name, default=is_default, enabled=enabled) for d in doms]
        server = ModelServer(name, is_default, enabled)
        model.append(server)
        for op, rtype, s, length in ops:
            e = s + length
            outcomes: list[str | None] = []
            for dom, handle in zip(doms, handles, strict=True):
                call = dom.map_io_range if op == "map" else dom.unmap_io_range
                try:
                    call(handle, rtype, s, e)
                except HypercallError as exc:
                    outcomes.append(exc.errno_name)
                else:
                    outcomes.append(None)
            assert outcomes[0] == outcomes[1]
            span = set(range(s, e + 1))
            if op == "map":
                assert (outcomes[0] == "EEXIST") == bool(span & server.points[rtype])
                if outcomes[0] is None:
                    server.points[rtype] |= span
            else:
                assert (outcomes[0] == "ENOENT") == (not span <= server.points[rtype])
                if outcomes[0] is None:
                    server.points[rtype] -= span
            if limit is None:
                assert outcomes[0] != "ENOMEM"
    for access in probes:
        routes = [dom.route(access) for dom in doms]
        expected = model_select(model, access, window)
        assert routes[0].handler == routes[1].handler == expected
        assert [n for n, _ in routes[0].tried] == [n for n, _ in routes[1].tried]
        for dom, route in zip(doms, routes, strict=True):
            assert route.visits == sum(v for _, v in route.tried)
            assert dom.route_fast(access) == (
                route.handler,
                route.server,
                route.visits,
                route.p2m_lookups,
                route.emulators_checked,
            )


def test_default_server_cannot_be_disabled() -> None:
    """hvm_set_ioreq_server_state() (hvm.c @RELEASE-4.6.0) looks servers up by id among
    the non-default ones only, so the default ioreq server is always enabled."""
    domain = IoreqDomain()
    with pytest.raises(ValueError, match="cannot be disabled"):
        domain.create_server("qemu", default=True, enabled=False)
