"""The entries of a case file's ``accesses`` list: trapped accesses and hypercall steps.

An **access** has ``type`` (pio | mmio), ``addr``, ``size``, ``count`` (reps, default 1),
``dir`` (read | write), ``df``, ``data`` (a write's value; for a rep write to 0xcf8 its
first dword, which Xen latches), ``ram_addr`` (a rep's guest-RAM buffer, which cuts
rounds at its page ends), ``rmw`` (this read is the read half of a read-modify-write whose
write faulted) and ``note``. Sizes: port I/O 1, 2 or 4 bytes; a rep element 1, 2, 4 or 8;
a single MMIO access 1 up to the release's largest (32 or 64 bytes), split by the emulator.
Its checks, each optional: ``expect`` (a server, ``none`` for the null handler, ``ram``,
``xen`` or ``xen:NAME`` for Xen's emulator NAME, ``retry`` or ``crash``),
``expect_visits``, ``expect_ioreq`` (e.g. ``PCI_CONFIG 0x0000001000000004``) and
``expect_emulators_checked`` (``io_handler[]`` entries walked). These need the access to
stay one request; one that becomes several takes ``expect_requests``, a list with one
mapping per request holding the same checks and optional ``addr``, ``size``, ``count``.

A **step** has ``do`` and what that hypercall takes: ``create`` (``server``, ``default``,
``bufioreq``; created disabled, as in Xen), ``destroy``, ``enable``, ``disable``,
``claim``, ``release_claim`` (``server``), ``map`` / ``unmap`` (``server`` and one of
``port``, ``memory``, ``pci``, ``wp_mem``), ``set_mem_type`` (``gfns``, ``type``),
``write_protect`` / ``unprotect`` (``server``, ``gfns``: the design's way). Its check:
``expect_rc``, 0 or an errno name (``EBUSY`` or ``-EBUSY``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PlainValidator

from sim.inputs import InputError, StrictModel, bounded
from sim.xen.abi import (
    CF8_PORT,
    MAX_IO_PORT,
    PAGE_SHIFT,
    IoreqType,
    PciSlot,
    format_ioreq,
    parse_pci_slot,
)
from sim.xen.emulate import Request, TooManyRequestsError, split_access
from sim.xen.intercept import emulators
from sim.xen.ioreq import NOT_SERVERS
from sim.xen.memtypes import mem_types_of
from sim.xen.profiles import Design, VersionProfile
from sim.xen.rangeset import U64_MAX

#: The largest page number whose byte range still fits below 2^64.
MAX_GFN = U64_MAX >> PAGE_SHIFT
#: One gfn pair may cover at most this many pages: enough for any guest's page tables,
#: small enough that the p2m bookkeeping of a typo stays cheap.
MAX_WP_PAGES_PER_PAIR = 1 << 20
#: Handler names that are not servers; a server may not take them.
RESERVED_NAMES = NOT_SERVERS
ERRNOS = ("EEXIST", "ENOMEM", "ENOSPC", "EBUSY", "ENOENT", "EINVAL")
STEP_KEYS = {
    "create": {"server", "default", "bufioreq"},
    "destroy": {"server"},
    "enable": {"server"},
    "disable": {"server"},
    "claim": {"server"},
    "release_claim": {"server"},
    "map": {"server", "port", "memory", "pci", "wp_mem"},
    "unmap": {"server", "port", "memory", "pci", "wp_mem"},
    "set_mem_type": {"gfns", "type"},
    "write_protect": {"server", "gfns"},
    "unprotect": {"server", "gfns"},
}
RANGE_KEYS = ("port", "memory", "pci", "wp_mem")


# -- value types ---------------------------------------------------------------------------
def plain_int(value: Any) -> bool:
    # YAML 1.1 turns yes/no/on/off into bools, and bool is an int subclass in Python.
    return isinstance(value, int) and not isinstance(value, bool)


def _bounded(value: Any, low: int, high: int, what: str) -> int:
    if not plain_int(value):
        raise ValueError(f"{what} must be an integer")
    if value < low:
        raise ValueError(f"{what} {value} is negative" if low == 0 else f"{what} is below {low}")
    if value > high:
        raise ValueError(f"{what} {value:#x} is above {high:#x}")
    return value


def _span(value: Any, high: int, what: str, ordered: bool = True) -> tuple[int, int]:
    """An int ``x`` (meaning ``[x, x]``) or a ``[start, end]`` pair, inclusive."""
    if plain_int(value):
        x = _bounded(value, 0, high, what)
        return x, x
    if isinstance(value, list) and len(value) == 2:
        s = _bounded(value[0], 0, high, f"start {what}")
        e = _bounded(value[1], 0, high, f"end {what}")
        if ordered and s > e:
            raise ValueError(f"start {s:#x} is above end {e:#x}")
        return s, e
    raise ValueError(f"expected an {what} or a [start, end] pair of them")


def _gfn_span(value: Any) -> tuple[int, int]:
    first, last = _span(value, MAX_GFN, "gfn")
    pages = last - first + 1
    if pages > MAX_WP_PAGES_PER_PAIR:
        raise ValueError(
            f"{pages} pages in one pair; at most {MAX_WP_PAGES_PER_PAIR} (1<<20) are allowed"
        )
    return first, last


@dataclass(frozen=True)
class ExpectedIoreq:
    ioreq_type: IoreqType
    addr: int

    def __str__(self) -> str:
        return format_ioreq(self.ioreq_type, self.addr)


def _expected_ioreq(value: Any) -> ExpectedIoreq:
    """``"TYPE ADDR"``, e.g. ``"PCI_CONFIG 0x0000001000000004"`` or ``"PIO 0xcfc"``."""
    names = ", ".join(t.name for t in IoreqType)
    if not isinstance(value, str) or len(value.split()) != 2:
        raise ValueError(f'expected "TYPE ADDRESS" with TYPE one of {names}')
    type_name, addr_text = value.split()
    if type_name.upper() not in IoreqType.__members__:
        raise ValueError(f"unknown ioreq type {type_name!r}: use one of {names}")
    try:
        addr = int(addr_text, 0)
    except ValueError:
        raise ValueError(f"{addr_text!r} is not an address (write it in hex, 0x...)") from None
    _bounded(addr, 0, U64_MAX, "address")
    return ExpectedIoreq(IoreqType[type_name.upper()], addr)


def _errno(value: Any) -> str | None:
    """``0`` (success) or an errno name, with or without its minus sign."""
    if plain_int(value) and value == 0:
        return None
    name = value.lstrip("-").upper() if isinstance(value, str) else None
    if name not in ERRNOS:
        raise ValueError(f"expected 0 or one of {', '.join(ERRNOS)}")
    return name


AddressSpan = Annotated[tuple[int, int], PlainValidator(lambda v: _span(v, U64_MAX, "address"))]
RawSpan = Annotated[
    tuple[int, int], PlainValidator(lambda v: _span(v, U64_MAX, "address", ordered=False))
]
GfnSpan = Annotated[tuple[int, int], PlainValidator(_gfn_span)]
PciSlotField = Annotated[PciSlot, PlainValidator(parse_pci_slot)]
ExpectedIoreqField = Annotated[ExpectedIoreq, PlainValidator(_expected_ioreq)]
Errno = Annotated[str | None, PlainValidator(_errno)]
U64 = Annotated[int, Field(ge=0, le=U64_MAX)]
#: What a check expects to have been counted: list nodes visited or handlers walked. A
#: case file's ranges and handlers are far fewer than 2^32.
Count = bounded(int, 0, 0xFFFFFFFF, "a count of visited nodes or walked handlers")
#: An access's width in bytes: a rep element is at most 8, a single MMIO access at most
#: the release's largest (64); the exact rule is checked per access type.
AccessSize = bounded(int, 1, 64, "no x86 access the emulator forwards is wider than 64 bytes")
#: ``struct ioreq`` carries the repeat count in a u32 (public/hvm/ioreq.h @4.6).
RepeatCount = bounded(int, 1, 0xFFFFFFFF, "[CODE] ioreq_t's count is a u32 (ioreq.h @4.6)")


class Checks(StrictModel):
    """What one request should come to; every key optional."""

    expect: str | None = None
    expect_visits: Count | None = None
    expect_ioreq: ExpectedIoreqField | None = None
    expect_emulators_checked: Count | None = None
    note: str | None = None

    @property
    def count_checks(self) -> int:
        keys = ("expect", "expect_visits", "expect_ioreq", "expect_emulators_checked")
        return sum(getattr(self, k) is not None for k in keys)


class RequestChecks(Checks):
    """One entry of ``expect_requests``: the request's shape and where it should go."""

    addr: U64 | None = None
    size: AccessSize | None = None
    count: RepeatCount | None = None

    @property
    def count_checks(self) -> int:
        return super().count_checks + sum(x is not None for x in (self.addr, self.size, self.count))


class AccessSpec(Checks):
    type: Literal["pio", "mmio"]
    addr: U64
    size: AccessSize
    count: RepeatCount = 1
    dir: Literal["read", "write"]
    df: bool = False
    data: U64 | None = None
    ram_addr: U64 | None = None
    rmw: bool = False
    expect_requests: list[RequestChecks] | None = None

    @property
    def is_write(self) -> bool:
        return self.dir == "write"

    def requests(self, prof: VersionProfile) -> list[Request]:
        return split_access(
            prof, self.type, self.addr, self.size, self.count, self.df, self.ram_addr
        )


class StepSpec(StrictModel):
    do: Literal[
        "create",
        "destroy",
        "enable",
        "disable",
        "claim",
        "release_claim",
        "map",
        "unmap",
        "set_mem_type",
        "write_protect",
        "unprotect",
    ]
    server: str | None = None
    default: bool = False
    bufioreq: bool = False
    port: RawSpan | None = None
    memory: RawSpan | None = None
    pci: PciSlotField | None = None
    wp_mem: RawSpan | None = None
    gfns: GfnSpan | None = None
    type: Literal["ram_rw", "mmio_write_dm", "ioreq_server"] | None = None
    expect_rc: Errno = None
    note: str | None = None

    @property
    def range_key(self) -> str | None:
        return next((k for k in RANGE_KEYS if getattr(self, k) is not None), None)


# -- the checks that need the release, or more than one field -------------------------------
def _fail(path: str | Path, keypath: str, problem: str) -> None:
    raise InputError(path, keypath, problem)


def check_expect(
    value: str | None, prof: VersionProfile, names: set[str], path: str | Path, key: str
) -> None:
    if value is None:
        return
    handler, _, emulator = value.partition(":")
    if emulator and handler in ("xen", "crash"):
        known = [e.name for e in emulators(prof) if e.behaviour != "passthrough"]
        if emulator not in known:
            _fail(path, key, f"Xen {prof.name} has no emulator {emulator!r} ({', '.join(known)})")
        return
    if value not in names | set(RESERVED_NAMES):
        listed = ", ".join(sorted(names)) or "no servers"
        _fail(
            path,
            key,
            f"no server is named {value!r} (servers: {listed}; or 'none' for the null "
            "handler, 'ram', 'xen', 'xen:NAME', 'retry', 'crash')",
        )


def check_access(
    access: AccessSpec, prof: VersionProfile, names: set[str], path: str | Path, where: str
) -> list[Request]:
    """Refuse what Xen cannot produce; return the requests the access becomes."""
    if "expect" in access.model_fields_set and access.expect is None:
        _fail(path, f"{where}.expect", "null is not a handler: write 'none', or leave expect out")
    check_expect(access.expect, prof, names, path, f"{where}.expect")
    _check_size(access, prof, path, where)
    _check_data(access, path, where)
    if access.ram_addr is not None and access.count == 1:
        _fail(path, f"{where}.ram_addr", "only a rep (count > 1) has a RAM buffer to clip by")
    if access.rmw and (access.type != "mmio" or access.is_write):
        _fail(path, f"{where}.rmw", "rmw marks an MMIO read: the read half of a read-modify-write")
    _check_window(access, prof, path, where)
    try:
        requests = access.requests(prof)
    except TooManyRequestsError as exc:
        _fail(path, f"{where}.count", f"{exc}: lower the count")
    _check_expectations(access, requests, prof, names, path, where)
    return requests


def _check_size(access: AccessSpec, prof: VersionProfile, path: str | Path, where: str) -> None:
    key = f"{where}.size"
    if access.type == "pio":
        if access.addr > MAX_IO_PORT:
            _fail(path, f"{where}.addr", f"I/O port {access.addr:#x} is above 0xffff (16 bits)")
        if access.size not in (1, 2, 4):
            _fail(
                path,
                key,
                f"port I/O is 1, 2 or 4 bytes (IN, OUT, INS, OUTS); {access.size} cannot "
                "reach Xen (and hvmemul_do_io refuses sizes that are not 1, 2, 4 or 8)",
            )
    elif access.count > 1 and access.size not in (1, 2, 4, 8):
        _fail(path, key, "a rep element is 1, 2, 4 or 8 bytes (MOVS/STOS/INS/OUTS)")
    elif access.size > prof.max_mmio_access:
        _fail(
            path,
            key,
            f"Xen {prof.name} emulates MMIO accesses of at most {prof.max_mmio_access} bytes "
            f"({prof.sources['max_mmio_access']})",
        )


def _check_data(access: AccessSpec, path: str | Path, where: str) -> None:
    cf8_write = access.type == "pio" and access.addr == CF8_PORT and access.size == 4
    if access.data is None:
        if cf8_write and access.is_write:
            # Xen latches this value (hvm_access_cf8, hvm.c @4.6, line 689); without it
            # the case could not say which device the next CFC access addresses.
            _fail(path, f"{where}.data", "a 4-byte write to 0xcf8 needs data: the CF8 value")
        return
    if not access.is_write:
        _fail(path, f"{where}.data", "data is only meaningful for a write")
    if access.count != 1 and not cf8_write:
        _fail(
            path,
            f"{where}.data",
            "a rep access (count > 1) takes its data from guest memory; only a rep "
            "OUTSD to 0xcf8 takes data (its first dword, which Xen latches)",
        )
    if access.data >> (8 * min(access.size, 8)):
        _fail(
            path,
            f"{where}.data",
            f"{access.data:#x} does not fit in a {access.size}-byte access",
        )


def _check_window(access: AccessSpec, prof: VersionProfile, path: str | Path, where: str) -> None:
    """The bytes touched, and the window the release's selector checks, stay in 0..2^64-1."""
    key = f"{where}.count" if access.count > 1 else f"{where}.addr"
    if access.type == "pio":
        if access.addr + access.size - 1 > MAX_IO_PORT:
            _fail(path, key, f"the access runs past port 0xffff ({access.size} bytes)")
        return
    span = (access.count - 1) * access.size
    first = access.addr - span if access.df else access.addr
    last = access.addr + access.size - 1 if access.df else access.addr + span + access.size - 1
    if not prof.mmio_window_df_aware:
        # 4.6 and 4.9 check [addr, addr + size * count - 1] whatever df says.
        last = max(last, access.addr + span + access.size - 1)
    if last > U64_MAX:
        _fail(path, key, f"the access window [{first:#x}, {last:#x}] ends beyond 2^64-1")
    if first < 0:
        _fail(
            path,
            key,
            f"the backwards (df) access window starts {-first:#x} bytes below address 0",
        )


def _check_expectations(
    access: AccessSpec,
    requests: list[Request],
    prof: VersionProfile,
    names: set[str],
    path: str | Path,
    where: str,
) -> None:
    listed = ", ".join(r.describe() for r in requests[:8]) + (", ..." if len(requests) > 8 else "")
    wanted = access.expect_requests
    if wanted is None:
        if len(requests) > 1 and access.count_checks:
            _fail(
                path,
                where,
                f"this access becomes {len(requests)} requests under xen {prof.name} "
                f"({listed}); check them with expect_requests, one entry per request",
            )
        return
    if access.count_checks:
        _fail(path, f"{where}.expect_requests", "give the checks per request or for the access")
    if len(wanted) != len(requests):
        _fail(
            path,
            f"{where}.expect_requests",
            f"{len(wanted)} entries, but this access becomes {len(requests)} requests under "
            f"xen {prof.name}: {listed}",
        )
    for j, checks in enumerate(wanted):
        check_expect(checks.expect, prof, names, path, f"{where}.expect_requests[{j}].expect")


def check_step(
    step: StepSpec,
    prof: VersionProfile,
    design: Design,
    names: set[str],
    path: str | Path,
    where: str,
) -> None:
    """Keys that do not belong to the step, and hypercalls the release does not have."""
    given = step.model_fields_set - {"do", "expect_rc", "note"}
    stray = sorted(given - STEP_KEYS[step.do])
    if stray:
        _fail(path, f"{where}.{stray[0]}", f"do: {step.do} takes no {stray[0]}")
    for key in sorted(STEP_KEYS[step.do] & {"server", "gfns"}):
        if getattr(step, key) is None:
            _fail(path, f"{where}.{key}", f"do: {step.do} needs {key}")
    if step.server is not None and step.server not in names:
        _fail(path, f"{where}.server", f"no server is named {step.server!r}")
    if step.do == "create" and step.default and not prof.default_server:
        _fail(path, f"{where}.default", f"Xen {prof.name} has no default ioreq server (2c257bd69a)")
    if step.do in ("claim", "release_claim") and not prof.p2m_ioreq_server:
        _fail(
            path,
            f"{where}.do",
            f"Xen {prof.name} has no XEN_DMOP_map_mem_type_to_ioreq_server (ca2b511d3f, 4.9)",
        )
    if step.do == "set_mem_type":
        if step.type is None:
            _fail(path, f"{where}.type", "do: set_mem_type needs type")
        allowed = [t.value for t in mem_types_of(prof.p2m_ioreq_server)]
        if step.type not in allowed:
            why = "c858e932c1 removed it in 4.7" if step.type == "mmio_write_dm" else "added in 4.8"
            _fail(
                path,
                f"{where}.type",
                f"HVMMEM_{step.type} is not in Xen {prof.name}'s interface ({why}); "
                f"use {' or '.join(allowed)}",
            )
    if step.do in ("map", "unmap"):
        _check_range_step(step, prof, design, path, where)


def _check_range_step(
    step: StepSpec, prof: VersionProfile, design: Design, path: str | Path, where: str
) -> None:
    keys = [k for k in RANGE_KEYS if getattr(step, k) is not None]
    if len(keys) != 1:
        _fail(path, where, f"do: {step.do} needs exactly one of {', '.join(RANGE_KEYS)}")
    key = keys[0]
    if key == "wp_mem" and design is not Design.WP_SPLIT:
        _fail(path, f"{where}.wp_mem", "only design wp-split has a WP_MEM rangeset (f5a32c5b8e)")
    if key == "pci":
        return
    s, e = getattr(step, key)
    if key == "port" and max(s, e) > MAX_IO_PORT:
        _fail(path, f"{where}.port", f"I/O port {max(s, e):#x} is above 0xffff (16 bits)")
    if s > e and not prof.map_start_above_end_einval:
        _fail(
            path,
            f"{where}.{key}",
            f"start {s:#x} above end {e:#x} is undefined in Xen {prof.name}: only an ASSERT "
            "(XSA-238); -EINVAL from d59e55b018 (4.10)",
        )
