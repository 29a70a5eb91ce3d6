"""Xen's own emulators: the handlers ``hvm_io_intercept()`` asks before any ioreq server.

``hvmemul_do_io()`` hands every request to ``hvm_io_intercept()`` first (emulate.c
@RELEASE-4.6.0 line 161, @RELEASE-4.9.0 line 186, @RELEASE-4.12.0 line 210, @master line
299). ``hvm_find_io_handler()`` walks the domain's ``io_handler[]`` array in registration
order, skips entries of the other type (PIO or MMIO) and stops at the first whose
``accept`` says yes (intercept.c @RELEASE-4.6.0 lines 205-227; @master lines 215-236).
Only if none does, or the one that does declines (``X86EMUL_UNHANDLEABLE``), is an ioreq
server selected. :meth:`InternalHandlers.scan` reports how many entries the walk looked
at: the loop runs over every registered entry, whatever its type, until one accepts.

Acceptance: a port handler takes ``[port, port + size)`` whole (``hvm_portio_accept``,
intercept.c @4.6 lines 75-84); an MMIO handler is asked about the first byte of the
access (direction-aware, ``hvm_mmio_first_byte``, intercept.c @4.6 line 37) and the domain
is crashed if it accepts the first byte but not the last (:attr:`VersionProfile.mmio_accept_crash`).

Registration order per release is read from ``hvm_domain_initialise()``, then
``arch_domain_create()`` (the PIT), then vCPU 0's ``hvm_vcpu_initialise()`` (vLAPIC, PM
timer, HPET); see :func:`emulators`. What depends on the domain's configuration:

* the PM timer's ports: hvmloader moves them to the 0xb000 block when ACPI is on
  (``HVM_PARAM_ACPI_IOPORTS_LOCATION``, tools/firmware/hvmloader/hvmloader.c
  @RELEASE-4.6.0 line 325); ``acpi: false`` keeps them at 0x1f40;
* the VGA memory handler serves reads only while its VRAM cache is on
  (``stdvga_cache``; stdvga.c @4.6 line 526), a guest state that starts off (line 558),
  and a rep write turns it off (lines 506-524). Master has no cache (53b7246bdf);
* the passthrough handlers (``dpci``/``g2m`` ports, MSI-X tables) accept only ranges of
  assigned PCI devices; no device is assigned here, so they are walked and never accept.
  From 4.9 the MSI-X handler is registered only when a device is assigned
  (``msixtbl_init``, xen/drivers/passthrough/pci.c @RELEASE-4.9.0 line 1386).

Not modelled: a vLAPIC the guest moved or switched to x2APIC mode (``vlapic_range``),
the AMD guest IOMMU and PVH dom0's vPCI and sub-page read-only handlers, none of which an
HVM guest has by default. HPET is registered for every HVM guest; ``hpet=0`` in xl only
makes it read all-ones (hpet.c @RELEASE-4.9.0 line 174), it is still Xen that answers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sim.xen.abi import CF8_PORT, PAGE_SHIFT
from sim.xen.profiles import VersionProfile

Behaviour = Literal["emulate", "decline", "vga-memory", "passthrough"]

VGA_MEM_BASE = 0xA0000  # stdvga.c @RELEASE-4.6.0 lines 38-39
VGA_MEM_LAST = 0xBFFFF
PM_BLOCK_ACPI = 0xB000  # ACPI_PM1A_EVT_BLK_ADDRESS_V1, public/hvm/ioreq.h @4.6 line 114
PM_BLOCK_LEGACY = 0x1F40  # ACPI_PM1A_EVT_BLK_ADDRESS_V0, public/hvm/ioreq.h @4.6 line 107


@dataclass(frozen=True, slots=True)
class Emulator:
    """One entry of ``io_handler[]``: what it covers, what it does, where it comes from.

    ``behaviour``: ``emulate`` (Xen answers, nothing is sent), ``decline`` (accepts, looks
    at the access and returns ``X86EMUL_UNHANDLEABLE``, so it is forwarded: the CF8 latch
    and stdvga's register ports), ``vga-memory`` (see :mod:`sim.xen.intercept`) or
    ``passthrough`` (accepts only assigned devices' ranges: never, here).
    """

    name: str
    kind: Literal["pio", "mmio"]
    first: int
    last: int  # inclusive
    behaviour: Behaviour
    source: str

    def covers(self, addr: int) -> bool:
        return self.first <= addr <= self.last


def _pio(
    name: str, port: int, size: int, source: str, behaviour: Behaviour = "emulate"
) -> Emulator:
    return Emulator(name, "pio", port, port + size - 1, behaviour, source)


def _mmio(name: str, base: int, length: int, source: str) -> Emulator:
    return Emulator(name, "mmio", base, base + length - 1, "emulate", source)


def _vcpu0_and_pit(tag: str, lines: dict[str, str], acpi: bool) -> list[Emulator]:
    """The PIT (``arch_domain_create``), then vCPU 0's vLAPIC, PM timer and HPET."""
    pm = PM_BLOCK_ACPI if acpi else PM_BLOCK_LEGACY
    i8254 = (
        "xen/arch/x86/emul-i8254.c"
        if tag in ("@RELEASE-4.12.0", "@master")
        else ("xen/arch/x86/hvm/i8254.c")
    )
    return [
        _pio("pit", 0x40, 4, f"pit_init, {i8254} {tag} {lines['pit']}"),
        _pio("speaker", 0x61, 1, f"pit_init, {i8254} {tag} {lines['speaker']}"),
        _mmio("vlapic", 0xFEE00000, 0x1000, f"vlapic_init, vlapic.c {tag} {lines['vlapic']}"),
        _pio("pmtimer", pm + 8, 4, f"pmtimer_init TMR_VAL, pmtimer.c {tag} {lines['pm']}"),
        _pio("pm1a-evt", pm, 4, f"pmtimer_init PM1a_STS, pmtimer.c {tag} {lines['pm']}"),
        _mmio("hpet", 0xFED00000, 1024, f"hpet_init, hpet.c {tag} {lines['hpet']}"),
    ]


def _vpic(tag: str, lines: str, one_elcr: bool) -> list[Emulator]:
    src = f"vpic_init, vpic.c {tag} lines {lines}"
    elcr = (
        [_pio("elcr", 0x4D0, 2, src + " (352c917acf: one ELCR handler)")]
        if one_elcr
        else [_pio("elcr1", 0x4D0, 1, src), _pio("elcr2", 0x4D1, 1, src)]
    )
    return [_pio("vpic-master", 0x20, 2, src), _pio("vpic-slave", 0xA0, 2, src), *elcr]


def _stdvga(tag: str, lines: str, ports: bool) -> list[Emulator]:
    src = f"stdvga_init, stdvga.c {tag} lines {lines}"
    memory = Emulator("stdvga-memory", "mmio", VGA_MEM_BASE, VGA_MEM_LAST, "vga-memory", src)
    if not ports:
        return [memory]
    return [
        _pio("stdvga-sequencer", 0x3C4, 2, src, "decline"),
        _pio("stdvga-graphics", 0x3CE, 2, src, "decline"),
        memory,
    ]


def _cf8(source: str) -> Emulator:
    return _pio("cf8-latch", CF8_PORT, 4, f"hvm_access_cf8, {source}", "decline")


def _g2m(name: str, source: str) -> Emulator:
    return Emulator(name, "pio", 0, 0xFFFF, "passthrough", source)


def emulators(prof: VersionProfile, acpi: bool = True) -> tuple[Emulator, ...]:
    """``io_handler[]`` of an HVM guest (no devices passed through), in registration order."""
    ioapic = 0xFEC00000  # VIOAPIC_DEFAULT_BASE_ADDRESS, length VIOAPIC_MEM_LENGTH 0x100
    debug = "hvm_print_line (port 0xe9)"
    if prof.name == "4.6":
        t = "@RELEASE-4.6.0"
        return (
            _g2m("dpci-ports", f"register_dpci_portio_handler, hvm.c {t} line 1587"),
            *_vpic(t, "430-434", one_elcr=False),
            _mmio("vioapic", ioapic, 0x100, f"vioapic_init, vioapic.c {t} line 458"),
            *_stdvga(t, "577-589", ports=True),
            _pio("rtc", 0x70, 2, f"rtc_init, rtc.c {t} line 799"),
            Emulator(
                "msix-tables", "mmio", 0, 0, "passthrough", f"msixtbl_init, hvm.c {t} line 1610"
            ),
            _pio("debugcon", 0xE9, 1, f"{debug}, hvm.c {t} line 1612"),
            _cf8(f"hvm.c {t} line 1613"),
            *_vcpu0_and_pit(
                t,
                {
                    "pit": "line 465 (domain.c line 658)",
                    "speaker": "line 466",
                    "vlapic": "line 1446 (hvm.c line 2411)",
                    "pm": "lines 341-342 (hvm.c line 2448)",
                    "hpet": "line 664 (hvm.c line 2449)",
                },
                acpi,
            ),
        )
    if prof.name in ("4.9", "4.12"):
        t = f"@{prof.ref}"
        new = prof.name == "4.12"
        hvm = {"g2m": 645 if new else 627, "ioreq": 648 if new else 629, "e9": 664 if new else 645}
        return (
            _g2m("g2m-ports", f"register_g2m_portio_handler, hvm.c {t} line {hvm['g2m']}"),
            _cf8(f"hvm_ioreq_init, ioreq.c {t} line {1539 if new else 1443}"),
            *_vpic(t, "442-446" if new else "441-445", one_elcr=False),
            _mmio(
                "vioapic", ioapic, 0x100, f"vioapic_init, vioapic.c {t} line {726 if new else 612}"
            ),
            *_stdvga(t, "601-613", ports=True),
            _pio("rtc", 0x70, 2, f"rtc_init, rtc.c {t} line {815 if new else 814}"),
            _pio("debugcon", 0xE9, 1, f"{debug}, hvm.c {t} line {hvm['e9']}"),
            *_vcpu0_and_pit(
                t,
                {
                    "pit": f"line {485 if new else 479} (domain.c line {608 if new else 681})",
                    "speaker": f"line {486 if new else 480}",
                    "vlapic": f"line {1628 if new else 1521}",
                    "pm": f"lines {'363-364' if new else '362-363'}",
                    "hpet": f"line {741 if new else 672}",
                },
                acpi,
            ),
        )
    t = "@master"
    return (
        _g2m("g2m-ports", f"register_g2m_portio_handler, hvm.c {t} line 671"),
        _cf8(f"arch_ioreq_domain_init, xen/arch/x86/hvm/ioreq.c {t} line 325"),
        *_vpic(t, "508-511", one_elcr=True),
        _mmio("vioapic", ioapic, 0x100, f"vioapic_init, vioapic.c {t} line 737"),
        *_stdvga(t, "92-106", ports=False),
        _pio("rtc", 0x70, 2, f"rtc_init, rtc.c {t} line 874"),
        _pio("debugcon", 0xE9, 1, f"{debug}, hvm.c {t} line 706"),
        *_vcpu0_and_pit(
            t,
            {
                "pit": "lines 648-649 (domain.c line 927)",
                "speaker": "line 649",
                "vlapic": "line 1713",
                "pm": "lines 356-357",
                "hpet": "line 747",
            },
            acpi,
        ),
    )


@dataclass(frozen=True, slots=True)
class Probe:
    """What the walk needs to know about one request."""

    kind: str
    addr: int
    size: int
    count: int
    df: bool
    is_write: bool


#: ``accept(emulator, probe) -> bool`` for the state-dependent VGA memory handler.
VgaAccept = Callable[[Emulator, Probe], bool]


class InternalHandlers:
    """One domain's ``io_handler[]``, with a fast path for requests no handler covers.

    No handler can accept a port access whose first port it does not cover, nor an MMIO
    access whose first byte lies on a page none of them touches, so those requests walk
    the whole array without a match: :meth:`scan` answers them from two sets.
    """

    def __init__(self, prof: VersionProfile, acpi: bool = True) -> None:
        self.profile = prof
        self.table = emulators(prof, acpi)
        self.count = len(self.table)
        self.ports = frozenset(
            port
            for e in self.table
            if e.kind == "pio" and e.behaviour != "passthrough"
            for port in range(e.first, e.last + 1)
        )
        self.pages = frozenset(
            page
            for e in self.table
            if e.kind == "mmio" and e.behaviour != "passthrough"
            for page in range(e.first >> PAGE_SHIFT, (e.last >> PAGE_SHIFT) + 1)
        )
        self._crash_if_size_gt_1 = prof.mmio_accept_crash == "size>1"

    def might_accept(self, kind: str, first_byte: int) -> bool:
        """False when no handler can accept a request starting at ``first_byte``."""
        if kind == "pio":
            return first_byte in self.ports
        return (first_byte >> PAGE_SHIFT) in self.pages

    def scan(self, probe: Probe, vga_accept: VgaAccept) -> tuple[Emulator | None, int, bool]:
        """``(accepting handler or None, entries walked, domain crashed)``.

        For MMIO the first byte is direction-aware in every release (``hvm_mmio_first_byte``
        in intercept.c @RELEASE-4.6.0 line 37), unlike the 4.6 ioreq selector.
        """
        if probe.kind == "pio":
            first = probe.addr
            last = probe.addr + probe.size  # exclusive, as hvm_portio_accept compares
        else:
            span = (probe.count - 1) * probe.size
            first = probe.addr - span if probe.df else probe.addr
            last = probe.addr + probe.size - 1 if probe.df else probe.addr + span + probe.size - 1
        if not self.might_accept(probe.kind, first):
            return None, self.count, False
        for walked, e in enumerate(self.table, start=1):
            if e.kind != probe.kind or e.behaviour == "passthrough":
                continue
            if probe.kind == "pio":
                if first >= e.first and last <= e.last + 1:
                    return e, walked, False
                continue
            if not e.covers(first):
                continue
            if e.behaviour == "vga-memory":
                if not (last <= e.last and vga_accept(e, probe)):
                    continue
                return e, walked, False
            if self._crash_if_size_gt_1:
                crash = probe.size > 1 and not e.covers(last)
            else:
                crash = last != first and not e.covers(last)
            return e, walked, crash
        return None, self.count, False
