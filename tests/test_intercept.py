"""Xen's own emulators come first (:mod:`sim.xen.intercept`), release by release.

Registration order is read from hvm_domain_initialise(), arch_domain_create() and vCPU 0's
hvm_vcpu_initialise() at each tag; the expected lists below are written out by hand from
those lines (cited in the module), so a change to the table shows up here.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.xen.abi import RangeType
from sim.xen.intercept import InternalHandlers, Probe, emulators
from sim.xen.ioreq import Access, IoreqDomain
from sim.xen.profiles import PROFILES, VERSIONS

COMMON_TAIL = ["pit", "speaker", "vlapic", "pmtimer", "pm1a-evt", "hpet"]
STDVGA = ["stdvga-sequencer", "stdvga-graphics", "stdvga-memory"]
VPIC = ["vpic-master", "vpic-slave", "elcr1", "elcr2"]
ORDER = {
    "4.6": [
        "dpci-ports",
        *VPIC,
        "vioapic",
        *STDVGA,
        "rtc",
        "msix-tables",
        "debugcon",
        "cf8-latch",
        *COMMON_TAIL,
    ],
    "4.9": ["g2m-ports", "cf8-latch", *VPIC, "vioapic", *STDVGA, "rtc", "debugcon", *COMMON_TAIL],
    "4.12": ["g2m-ports", "cf8-latch", *VPIC, "vioapic", *STDVGA, "rtc", "debugcon", *COMMON_TAIL],
    "master": [
        "g2m-ports",
        "cf8-latch",
        "vpic-master",
        "vpic-slave",
        "elcr",
        "vioapic",
        "stdvga-memory",
        "rtc",
        "debugcon",
        *COMMON_TAIL,
    ],
}


@pytest.mark.parametrize("version", VERSIONS)
def test_registration_order(version: str) -> None:
    table = emulators(PROFILES[version])  # type: ignore[index]
    assert [e.name for e in table] == ORDER[version]
    assert len(table) <= 32  # NR_IO_HANDLERS (xen/include/asm-x86/hvm/io.h @4.6)
    assert all(e.source for e in table)


def pio(port: int, size: int = 1, *, write: bool = False, data: int | None = None) -> Access:
    return Access("pio", port, size, write, data=data)


def mmio(addr: int, size: int = 4, *, write: bool = False, count: int = 1) -> Access:
    return Access("mmio", addr, size, write, count=count)


EMULATED = [
    (pio(0x20), "vpic-master"),
    (pio(0xA1), "vpic-slave"),
    (pio(0x40, 4), "pit"),
    (pio(0x61), "speaker"),
    (pio(0x71), "rtc"),
    (pio(0xE9, write=True, data=0x41), "debugcon"),
    (pio(0xB008, 4), "pmtimer"),
    (pio(0xB000, 2), "pm1a-evt"),
    (mmio(0xFEE00020), "vlapic"),
    (mmio(0xFEC000FC), "vioapic"),
    (mmio(0xFED003F8, 8), "hpet"),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("access", "name"), EMULATED, ids=[n for _, n in EMULATED])
def test_emulated_ranges_never_reach_a_server(version: str, access: Access, name: str) -> None:
    """A server mapping the same range is never asked (emulate.c @4.6 lines 161-171)."""
    dom = IoreqDomain(version=version)
    srv = dom.create_server("greedy")
    dom.map_io_range(srv, RangeType.PORT, 0, 0xFFFF)
    dom.map_io_range(srv, RangeType.MEMORY, 0, (1 << 40) - 1)
    route = dom.route(access)
    assert (route.handler, route.emulator, route.visits, route.tried) == ("xen", name, 0, ())
    assert route.emulators_checked == ORDER[version].index(name) + 1


@pytest.mark.parametrize("version", VERSIONS)
def test_just_outside_an_emulator_the_servers_are_asked(version: str) -> None:
    dom = IoreqDomain(version=version)
    for access in (pio(0x22), pio(0x43, 2), mmio(0xFED00400), mmio(0xFEC00100), pio(0xB00C)):
        route = dom.route(access)
        assert route.handler == "none"
        assert route.emulator is None
        assert route.emulators_checked == len(ORDER[version])


@pytest.mark.parametrize(("version", "taken"), [("4.6", False), ("4.9", False), ("master", True)])
def test_both_elcrs_in_one_access_need_masters_single_handler(version: str, taken: bool) -> None:
    """vpic.c @4.6 lines 433-434: two 1-byte handlers; 352c917acf (4.18): one of 2 bytes."""
    route = IoreqDomain(version=version).route(pio(0x4D0, 2, write=True, data=0))
    assert (route.handler == "xen") is taken


def test_acpi_off_leaves_the_pm_timer_at_its_v0_ports() -> None:
    """hvmloader moves it to 0xb000 only with ACPI (hvmloader.c @RELEASE-4.6.0 line 325)."""
    on, off = IoreqDomain(acpi=True), IoreqDomain(acpi=False)
    assert on.route(pio(0xB008, 4)).handler == "xen"
    assert off.route(pio(0xB008, 4)).handler == "none"
    assert off.route(pio(0x1F48, 4)).emulator == "pmtimer"
    assert on.route(pio(0x1F48, 4)).handler == "none"


@pytest.mark.parametrize("version", VERSIONS)
def test_cf8_latch_declines_and_latches_a_rep_outsd_first_dword(version: str) -> None:
    """hvm_access_cf8 latches 4-byte writes and returns X86EMUL_UNHANDLEABLE; for a rep
    OUTSD the intercept loop hands it the first element and stops (intercept.c @4.6
    lines 163-199)."""
    dom = IoreqDomain(version=version)
    srv = dom.create_server("dm")
    dom.map_io_range(srv, RangeType.PORT, 0xCF8, 0xCFF)
    route = dom.route(Access("pio", 0xCF8, 4, True, count=3, data=0x80001004))
    assert (route.handler, route.cf8_latched, route.emulator) == ("dm", True, "cf8-latch")
    assert dom.pci_cf8 == 0x80001004
    route = dom.route(pio(0xCFA, 2, write=True, data=0x1234))
    assert (route.handler, route.cf8_latched) == ("dm", False)  # accepted, not latched
    assert dom.pci_cf8 == 0x80001004


@pytest.mark.parametrize("version", ["4.6", "4.9", "4.12", "master"])
def test_vram_write_goes_buffered_when_the_server_has_a_ring(version: str) -> None:
    """stdvga_mem_write selects and sends buffered (stdvga.c @4.6 lines 482-487); with no
    ring hvm_send_buffered_ioreq fails (hvm.c @4.6 lines 2634-2637) and hvmemul_do_io
    selects again for a synchronous send: two lookups."""
    dom = IoreqDomain(version=version)
    ring = dom.create_server("vga", bufioreq=True)
    dom.map_io_range(ring, RangeType.MEMORY, 0xA0000, 0xAFFFF)
    plain = dom.create_server("plain")
    dom.map_io_range(plain, RangeType.MEMORY, 0xB0000, 0xBFFFF)
    route = dom.route(mmio(0xA0000, 1, write=True))
    assert (route.handler, route.buffered, route.emulator) == ("vga", True, "stdvga-memory")
    assert [name for name, _ in route.tried] == ["plain", "vga"]
    route = dom.route(mmio(0xB0000, 1, write=True))
    assert (route.handler, route.buffered) == ("plain", False)
    assert [name for name, _ in route.tried] == ["plain", "plain"]


@pytest.mark.parametrize(("version", "served"), [("4.6", True), ("4.12", True), ("master", False)])
def test_vram_reads_are_xens_only_with_the_cache_on(version: str, served: bool) -> None:
    """stdvga.c @4.6 line 526 (reads need the cache); a rep write turns it off (lines
    506-524); master dropped the cache (53b7246bdf)."""
    dom = IoreqDomain(version=version, stdvga_cache=True)
    assert (dom.route(mmio(0xA0010, 2)).handler == "xen") is served
    dom.route(mmio(0xA0000, 1, write=True, count=4))
    assert dom.route(mmio(0xA0010, 2)).handler == "none"


@pytest.mark.parametrize(("version", "byte_rep"), [("4.6", "xen"), ("4.9", "crash")])
def test_an_access_over_an_emulators_end_crashes_the_domain(version: str, byte_rep: str) -> None:
    """hvm_mmio_accept: first byte accepted, last not -> domain_crash; 4.6 tests it only
    for size > 1 (intercept.c @4.6 lines 45-48), 4.9+ whenever last != first."""
    dom = IoreqDomain(version=version)
    assert dom.route(mmio(0xFEE00FFC, 4, write=True, count=2)).handler == "crash"
    assert dom.route(mmio(0xFEE00FFF, 1, write=True, count=2)).handler == byte_rep


accesses = st.builds(
    Probe,
    st.sampled_from(["pio", "mmio"]),
    st.one_of(
        st.integers(0, 0x10000), st.integers(0x9F000, 0xC1000), st.integers(0xFEBFF000, 0xFEE02000)
    ),
    st.sampled_from([1, 2, 4, 8]),
    st.integers(1, 4),
    st.booleans(),
    st.booleans(),
)


@pytest.mark.parametrize("version", VERSIONS)
@given(probe=accesses, acpi=st.booleans())
def test_fast_path_agrees_with_walking_every_entry(version: str, probe: Probe, acpi: bool) -> None:
    """The sets behind might_accept() never hide a handler a full walk would find."""
    handlers = InternalHandlers(PROFILES[version], acpi)  # type: ignore[index]
    found, walked, _ = handlers.scan(probe, lambda e, p: True)
    naive = None
    for i, e in enumerate(handlers.table, start=1):
        if e.kind != probe.kind or e.behaviour == "passthrough":
            continue
        if probe.kind == "pio":
            if e.first <= probe.addr and probe.addr + probe.size <= e.last + 1:
                naive = (e, i)
                break
        else:
            first = probe.addr - (probe.count - 1) * probe.size if probe.df else probe.addr
            last = probe.addr + probe.size - 1 if probe.df else first + probe.count * probe.size - 1
            if e.covers(first) and (e.behaviour != "vga-memory" or last <= e.last):
                naive = (e, i)
                break
    assert (found, walked) == (naive if naive else (None, handlers.count))
