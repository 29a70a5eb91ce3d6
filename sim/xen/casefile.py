"""Case files for ``vgpu-sim select``: hand-written accesses routed exactly as Xen would.

A case file names a domain's configuration, its ioreq servers in creation order with the
ranges each one maps, and a list of trapped accesses. Every access is routed through
:class:`sim.xen.ioreq.IoreqDomain` in order (CF8 latching carries over from one access to
the next) and the result is printed as a table. The exit status is 1 when any stated
expectation fails, so the files in ``scenarios/selection/`` are regression tests for
every selection rule.

Top-level keys (only ``servers`` and ``accesses`` are required):

* ``design``: xen-4.6 | wp-split | p2m-ioreq-server; ``rangeset``: list | rbtree;
  ``vendor``: intel | amd; ``max_nr_io_ranges``: int >= 0 or null (unlimited), default
  256; ``mmio_window``: xen-4.6 | xen-4.12; ``description``: free text.
* ``servers[]``: ``name``; either ``default: true`` (no ranges, always enabled) or
  ``enabled`` (default true) with ``port`` / ``memory`` (``[s, e]`` pairs or single
  ints), ``pci`` ("bus:dev.fn" in hex) and ``wp_pages`` (gfns or ``[first, last]``).
  Ranges are mapped in the order port, memory, pci, wp_pages, each list in file order.
* ``accesses[]``: ``type`` pio | mmio, ``addr``, ``size`` (1, 2, 4, 8), ``count``
  (default 1), ``dir`` read | write, ``df``, ``data`` (the value of a single write; needed
  for a 4-byte CF8 write) and ``note``. Expectations, each optional: ``expect`` (a server
  name, ``none`` for the null handler, ``ram`` for a read Xen emulates),
  ``expect_visits`` (rangeset nodes visited, summed over the servers asked) and
  ``expect_ioreq`` (the request as Xen rewrites it, e.g. ``PCI_CONFIG
  0x0000001000000004`` or ``PIO 0xcfc``).

Ranges go through the same hypercall semantics as the model. A map that Xen would refuse
(``-EEXIST``, ``-ENOMEM``, ``-EBUSY`` ...) is not an input error: the device model's
hypercall would fail in Xen too, so it is reported as a warning and the range skipped.
Everything wrong with the file itself is an :class:`~sim.inputs.InputError`, raised
before anything is printed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, PlainValidator

from sim.inputs import InputError, StrictModel, load_yaml, validate
from sim.xen.abi import (
    CF8_PORT,
    MAX_NR_IO_RANGES,
    PAGE_SHIFT,
    IoreqType,
    PciSlot,
    format_ioreq,
    parse_pci_slot,
)
from sim.xen.rangeset import U64_MAX

#: The largest page number whose byte range still fits below 2^64 (xen-4.6 maps
#: ``[gfn << 12, (gfn << 12) | 0xfff]`` into the MEMORY rangeset).
MAX_GFN = U64_MAX >> PAGE_SHIFT
#: One ``wp_pages`` pair may cover at most this many pages: enough for any guest's
#: page tables, small enough that the p2m bookkeeping of a typo stays cheap.
MAX_WP_PAGES_PER_PAIR = 1 << 20
#: An x86 I/O port number is 16 bits (IN/OUT take it from DX or an imm8).
MAX_IO_PORT = 0xFFFF
#: ``struct ioreq`` carries the repeat count in a u32 (public/hvm/ioreq.h @4.6).
MAX_REPEAT_COUNT = 0xFFFFFFFF
#: Handler names that are not servers; a server may not take them.
NULL_HANDLER = "none"
RAM_HANDLER = "ram"
RESERVED_NAMES = (NULL_HANDLER, RAM_HANDLER)

ERRNO_REASONS = {
    "EEXIST": "it overlaps a range this server already has (servers may overlap each other)",
    "ENOMEM": "the node budget is spent (rangeset_add_range allocates before it merges)",
    "EBUSY": "another server already claims the p2m_ioreq_server type",
    "ENOENT": "no such server (the default server has no rangesets)",
    "EINVAL": "the range or its type is not valid here",
}


# -- schema ------------------------------------------------------------------------------
def _plain_int(value: Any) -> bool:
    # YAML 1.1 turns yes/no/on/off into bools, and bool is an int subclass in Python.
    return isinstance(value, int) and not isinstance(value, bool)


def _bounded(value: Any, low: int, high: int, what: str) -> int:
    if not _plain_int(value):
        raise ValueError(f"{what} must be an integer")
    if value < low:
        raise ValueError(f"{what} {value} is negative" if low == 0 else f"{what} is below {low}")
    if value > high:
        raise ValueError(f"{what} {value:#x} is above {high:#x}")
    return value


def _span(value: Any, high: int, what: str) -> tuple[int, int]:
    """An int ``x`` (meaning ``[x, x]``) or a ``[start, end]`` pair, inclusive."""
    if _plain_int(value):
        x = _bounded(value, 0, high, what)
        return x, x
    if isinstance(value, list) and len(value) == 2:
        s = _bounded(value[0], 0, high, f"start {what}")
        e = _bounded(value[1], 0, high, f"end {what}")
        if s > e:
            raise ValueError(f"start {s:#x} is above end {e:#x}")
        return s, e
    raise ValueError(f"expected an {what} or a [start, end] pair of them")


def _address_span(value: Any) -> tuple[int, int]:
    return _span(value, U64_MAX, "address")


def _gfn_span(value: Any) -> tuple[int, int]:
    first, last = _span(value, MAX_GFN, "gfn")
    pages = last - first + 1
    if pages > MAX_WP_PAGES_PER_PAIR:
        raise ValueError(
            f"{pages} pages in one pair; at most {MAX_WP_PAGES_PER_PAIR} (1<<20) are allowed"
        )
    return first, last


def _server_name(value: str) -> str:
    # Names are table cells and `expect` values: one word keeps both unambiguous.
    if not value or len(value.split()) != 1 or value != value.strip():
        raise ValueError("a server name is one non-empty word, without spaces")
    return value


def _access_size(value: int) -> int:
    if value not in (1, 2, 4, 8):
        raise ValueError("must be 1, 2, 4 or 8: hvmemul_do_io refuses other sizes")
    return value


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


AddressSpan = Annotated[tuple[int, int], PlainValidator(_address_span)]
GfnSpan = Annotated[tuple[int, int], PlainValidator(_gfn_span)]
PciSlotField = Annotated[PciSlot, PlainValidator(parse_pci_slot)]
ExpectedIoreqField = Annotated[ExpectedIoreq, PlainValidator(_expected_ioreq)]
U64 = Annotated[int, Field(ge=0, le=U64_MAX)]


class ServerSpec(StrictModel):
    name: Annotated[str, AfterValidator(_server_name)]
    default: bool = False
    enabled: bool = True
    port: list[AddressSpan] = Field(default_factory=list)
    memory: list[AddressSpan] = Field(default_factory=list)
    pci: list[PciSlotField] = Field(default_factory=list)
    wp_pages: list[GfnSpan] = Field(default_factory=list)


class AccessSpec(StrictModel):
    type: Literal["pio", "mmio"]
    addr: U64
    size: Annotated[int, AfterValidator(_access_size)]
    count: Annotated[int, Field(ge=1, le=MAX_REPEAT_COUNT)] = 1
    dir: Literal["read", "write"]
    df: bool = False
    data: U64 | None = None
    expect: str | None = None
    expect_visits: Annotated[int, Field(ge=0)] | None = None
    expect_ioreq: ExpectedIoreqField | None = None
    note: str | None = None

    @property
    def is_write(self) -> bool:
        return self.dir == "write"


class CaseFile(StrictModel):
    description: str | None = None
    design: Literal["xen-4.6", "wp-split", "p2m-ioreq-server"] = "xen-4.6"
    rangeset: Literal["list", "rbtree"] = "list"
    vendor: Literal["intel", "amd"] = "intel"
    max_nr_io_ranges: Annotated[int, Field(ge=0)] | None = MAX_NR_IO_RANGES
    mmio_window: Literal["xen-4.6", "xen-4.12"] = "xen-4.6"
    servers: list[ServerSpec]
    accesses: Annotated[list[AccessSpec], Field(min_length=1)]


# -- loading and the checks that need more than one field ---------------------------------
_YAML_STRING_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _yaml_trap_hint(problem: str) -> str:
    """Explain the two YAML 1.1 surprises behind most type errors in hand-written files."""
    if "valid integer" in problem and _YAML_STRING_NUMBER.search(problem):
        return "; YAML reads 1e3 as a string: write the integer out (1000 or 0x3e8)"
    if "valid string" in problem and ("(got False)" in problem or "(got True)" in problem):
        return "; YAML reads unquoted yes/no/on/off/true/false as booleans: quote it"
    return ""


def load_case_file(path: str | Path) -> CaseFile:
    """Read and fully validate a case file; every problem is an :class:`InputError`."""
    data = load_yaml(path)
    if data is not None and not isinstance(data, dict):
        raise InputError(path, "(top level)", "a case file must be a mapping of keys")
    try:
        case = validate(CaseFile, data, path)
    except InputError as exc:
        hint = _yaml_trap_hint(exc.problem)
        if hint:
            raise InputError(exc.file, exc.keypath, exc.problem + hint) from None
        raise
    _check_servers(case, path)
    _check_accesses(case, path)
    return case


def _check_servers(case: CaseFile, path: str | Path) -> None:
    seen: dict[str, int] = {}
    default_index: int | None = None
    for i, server in enumerate(case.servers):
        where = f"servers[{i}]"
        if server.name in RESERVED_NAMES:
            raise InputError(
                path,
                f"{where}.name",
                f"{server.name!r} is reserved for a handler that is "
                "not a server ('none': Xen's null handler, 'ram': emulated from RAM)",
            )
        if server.name in seen:
            raise InputError(
                path,
                f"{where}.name",
                f"duplicate server name {server.name!r} (also servers[{seen[server.name]}])",
            )
        seen[server.name] = i
        if not server.default:
            continue
        if default_index is not None:
            raise InputError(
                path,
                f"{where}.default",
                f"a domain has at most one default ioreq server; servers[{default_index}] "
                "is already the default",
            )
        default_index = i
        # The default server has no rangesets (hvm_ioreq_server_alloc_rangesets() returns
        # early for it, hvm.c @4.6) and cannot be disabled (set_state skips it).
        for key in ("port", "memory", "pci", "wp_pages", "enabled"):
            if key in server.model_fields_set:
                problem = (
                    "the default server is always enabled"
                    if key == "enabled"
                    else "the default server has no ranges: it catches what no server claims"
                )
                raise InputError(path, f"{where}.{key}", problem)


def _check_accesses(case: CaseFile, path: str | Path) -> None:
    names = {server.name for server in case.servers}
    for i, access in enumerate(case.accesses):
        where = f"accesses[{i}]"
        if "expect" in access.model_fields_set and access.expect is None:
            raise InputError(
                path,
                f"{where}.expect",
                "null is not a handler: write 'none' for Xen's null handler, or leave expect out",
            )
        if access.expect is not None and access.expect not in names | set(RESERVED_NAMES):
            known = ", ".join(sorted(names)) or "no servers"
            raise InputError(
                path,
                f"{where}.expect",
                f"no server is named {access.expect!r} (servers: {known}; "
                "or 'none' for the null handler, 'ram' for a read Xen emulates)",
            )
        _check_data(access, path, where)
        _check_window(case, access, path, where)


def _check_data(access: AccessSpec, path: str | Path, where: str) -> None:
    if access.data is None:
        if (
            access.type == "pio"
            and access.addr == CF8_PORT
            and access.size == 4
            and access.count == 1
            and access.is_write
        ):
            # Xen latches this value (hvm_access_cf8, hvm.c @4.6, line 689); without it
            # the case could not say which device the next CFC access addresses.
            raise InputError(
                path, f"{where}.data", "a 4-byte write to 0xcf8 needs data: the CF8 value"
            )
        return
    if not access.is_write:
        raise InputError(path, f"{where}.data", "data is only meaningful for a write")
    if access.count != 1:
        raise InputError(
            path, f"{where}.data", "a rep access (count > 1) takes its data from guest memory"
        )
    if access.data >> (8 * access.size):
        raise InputError(
            path,
            f"{where}.data",
            f"{access.data:#x} does not fit in a {access.size}-byte access",
        )


def access_window(case: CaseFile, access: AccessSpec) -> tuple[int, int]:
    """The bytes Xen's selector checks for ``access``: ``(first, last)``, unclipped.

    PIO checks ``[addr, addr + size - 1]`` whatever the count. MMIO checks
    ``[addr, addr + size * count - 1]`` in 4.6, which ignores ``df``; the 4.12 rule
    (60a56dc006) ends a backwards rep at ``addr + size - 1`` instead.
    """
    if access.type == "pio":
        return access.addr, access.addr + access.size - 1
    if case.mmio_window == "xen-4.12" and access.df:
        return access.addr - (access.count - 1) * access.size, access.addr + access.size - 1
    return access.addr, access.addr + access.size * access.count - 1


def _check_window(case: CaseFile, access: AccessSpec, path: str | Path, where: str) -> None:
    if access.type == "pio" and access.addr > MAX_IO_PORT:
        raise InputError(
            path, f"{where}.addr", f"I/O port {access.addr:#x} is above 0xffff (16 bits)"
        )
    first, last = access_window(case, access)
    key = f"{where}.count" if access.count > 1 else f"{where}.addr"
    if last > U64_MAX:
        raise InputError(
            path,
            key,
            f"the access window [{first:#x}, {last:#x}] ends beyond 2^64-1",
        )
    if first < 0:
        raise InputError(
            path,
            key,
            f"the backwards (df) access window starts {-first:#x} bytes below address 0",
        )
