"""Case files for ``vgpu-sim select``: hand-written accesses routed exactly as a Xen release would.

A case file names a Xen release and a domain's configuration, its ioreq servers in
creation order with the ranges each maps, and a sequence of trapped accesses with, between
them, hypercall steps (create, destroy, enable, disable, map, unmap, claim,
release_claim, set_mem_type, write_protect, unprotect). Every access is split into the
requests the release's instruction emulator makes (:mod:`sim.xen.emulate`) and each
request is routed in order (:mod:`sim.xen.caserun`); a CF8 latch and every step's effect
carry over. The exit status is 1 when any expectation fails, so the files in
``scenarios/selection/`` are regression tests for every routing rule of every release.

Top-level keys (only ``servers`` and ``accesses`` are required):

* ``xen``: "4.6" | "4.9" | "4.12" | "master" (:mod:`sim.xen.profiles`); ``design``:
  xen-4.6 | wp-split | p2m-ioreq-server. Neither given: 4.6 and xen-4.6; one given: the
  other follows (:func:`sim.xen.profiles.resolve`); a pair no release ran is refused.
* ``rangeset``: list | rbtree; ``max_nr_io_ranges``: int >= 0 or null (default 256);
  ``vendor``: intel | amd and ``amd_family`` (default 0x15, decoded by every release);
  ``acpi`` (default true) and ``stdvga_cache`` (default false): see :mod:`sim.xen.intercept`.
* ``servers[]``: ``name``; ``default: true`` (4.6 and 4.9 only; no ranges, always
  enabled) or ``enabled`` (default **true**: Xen creates a server disabled and its device
  model enables it, so the file does both unless told not to), ``bufioreq`` (a buffered
  ring; default false, as XenGT), ``port`` / ``memory`` (``[s, e]`` pairs or single
  ints; ports at most 0xffff), ``pci`` ("bus:dev.fn") and ``wp_pages`` (gfns or
  ``[first, last]``, write-protected the design's way).
* ``accesses[]``: an access (``type``) or a step (``do``); see :mod:`sim.xen.casespec`.

A hypercall Xen refuses is not an input error: in ``servers`` it becomes a warning and the
range is skipped; as a step its return code is shown and can be expected. Everything
wrong with the file itself is an :class:`~sim.inputs.InputError`, raised before anything
is printed: unknown keys and bad values, requests Xen cannot produce (8-byte port I/O, a
plain read of a write-protected page) and features the release does not have.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from sim.inputs import InputError, StrictModel, bounded, load_yaml, validate
from sim.xen.abi import MAX_IO_PORT, MAX_NR_IO_RANGES
from sim.xen.casespec import (
    RESERVED_NAMES,
    AccessSpec,
    AddressSpan,
    GfnSpan,
    PciSlotField,
    StepSpec,
    check_access,
    check_step,
)
from sim.xen.profiles import VERSIONS, Design, VersionProfile, resolve


def _server_name(value: str) -> str:
    # Names are table cells and `expect` values: one word keeps both unambiguous, and
    # "xen:NAME" in `expect` names one of Xen's own emulators.
    if not value or len(value.split()) != 1 or value != value.strip() or ":" in value:
        raise ValueError("a server name is one non-empty word, without spaces or ':'")
    return value


def _port_span(value: tuple[int, int]) -> tuple[int, int]:
    if value[1] > MAX_IO_PORT:
        raise ValueError(f"I/O port {value[1]:#x} is above 0xffff (x86 ports are 16 bits)")
    return value


class ServerSpec(StrictModel):
    name: Annotated[str, AfterValidator(_server_name)]
    default: bool = False
    enabled: bool = True
    bufioreq: bool = False
    port: list[Annotated[AddressSpan, AfterValidator(_port_span)]] = Field(default_factory=list)
    memory: list[AddressSpan] = Field(default_factory=list)
    pci: list[PciSlotField] = Field(default_factory=list)
    wp_pages: list[GfnSpan] = Field(default_factory=list)


def _version(value: Any) -> Any:
    # YAML reads an unquoted 4.6 as a float; the releases here are unambiguous as text.
    if isinstance(value, float) and str(value) in VERSIONS:
        return str(value)
    return value


class CaseFile(StrictModel):
    description: str | None = None
    xen: Literal["4.6", "4.9", "4.12", "master"] | None = None
    design: Literal["xen-4.6", "wp-split", "p2m-ioreq-server"] | None = None
    rangeset: Literal["list", "rbtree"] = "list"
    vendor: Literal["intel", "amd"] = "intel"
    amd_family: Annotated[int, Field(ge=0, le=0xFF)] = 0x15
    acpi: bool = True
    stdvga_cache: bool = False
    max_nr_io_ranges: (
        bounded(
            int,
            0,
            1 << 20,
            "0 makes even the first map fail (rangeset.c); 2^20 nodes is above any vGPU's "
            "page-table count",
        )
        | None
    ) = MAX_NR_IO_RANGES
    servers: list[ServerSpec]
    #: Raw mappings in the file; after :func:`load_case_file`, AccessSpec and StepSpec.
    accesses: Annotated[list[Any], Field(min_length=1)]

    @property
    def profile(self) -> VersionProfile:
        return resolve(self.xen, self.design)[0]

    @property
    def design_used(self) -> Design:
        return resolve(self.xen, self.design)[1]


# -- loading and the checks that need more than one field ---------------------------------
_YAML_STRING_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _yaml_trap_hint(problem: str) -> str:
    """Explain the two YAML 1.1 surprises behind most type errors in hand-written files."""
    if "valid integer" in problem and _YAML_STRING_NUMBER.search(problem):
        return "; YAML reads 1e3 as a string: write the integer out (1000 or 0x3e8)"
    if "valid string" in problem and ("(got False)" in problem or "(got True)" in problem):
        return "; YAML reads unquoted yes/no/on/off/true/false as booleans: quote it"
    return ""


def _validated(model: Any, data: Any, path: str | Path, prefix: tuple[Any, ...] = ()) -> Any:
    try:
        return validate(model, data, path, prefix)
    except InputError as exc:
        hint = _yaml_trap_hint(exc.problem)
        if hint:
            raise InputError(exc.file, exc.keypath, exc.problem + hint) from None
        raise


def load_case_file(path: str | Path) -> CaseFile:
    """Read and fully validate a case file; every problem is an :class:`InputError`."""
    data = load_yaml(path)
    if data is not None and not isinstance(data, dict):
        raise InputError(path, "(top level)", "a case file must be a mapping of keys")
    data = dict(data or {})
    if "mmio_window" in data:
        raise InputError(
            path,
            "mmio_window",
            "replaced by xen: the MMIO window is part of the Xen release "
            '(xen: "4.12" for the direction-aware window of 60a56dc006)',
        )
    if "xen" in data:
        data["xen"] = _version(data["xen"])
        if isinstance(data["xen"], float):
            raise InputError(path, "xen", f'quote the release: xen: "{data["xen"]}"')
    case = _validated(CaseFile, data, path)
    try:
        prof, design = resolve(case.xen, case.design)
    except ValueError as exc:
        raise InputError(path, "design" if case.design else "xen", str(exc)) from None
    if case.stdvga_cache and prof.name == "master":
        raise InputError(
            path,
            "stdvga_cache",
            "master has no stdvga VRAM cache (53b7246bdf, 4.20): VRAM reads always go to a server",
        )
    _check_servers(case, prof, path)
    raw_items: list[AccessSpec | StepSpec] = []
    for i, raw in enumerate(case.accesses):
        if not isinstance(raw, dict):
            raise InputError(path, f"accesses[{i}]", "an access or a step is a mapping of keys")
        spec = StepSpec if "do" in raw else AccessSpec
        raw_items.append(_validated(spec, raw, path, ("accesses", i)))
    # Expectations and steps may name any server the file creates, wherever it does.
    names = {s.name for s in case.servers}
    for i, item in enumerate(raw_items):
        if isinstance(item, StepSpec) and item.do == "create" and item.server is not None:
            _check_name(item.server, path, f"accesses[{i}].server")
            names.add(item.server)
    for i, item in enumerate(raw_items):
        if isinstance(item, StepSpec):
            check_step(item, prof, design, names, path, f"accesses[{i}]")
        else:
            check_access(item, prof, names, path, f"accesses[{i}]")
    # The raw mappings are replaced by their validated specs (a frozen model's copy).
    return case.model_copy(update={"accesses": raw_items})


def _check_name(name: str, path: str | Path, keypath: str) -> None:
    try:
        _server_name(name)
    except ValueError as exc:
        raise InputError(path, keypath, str(exc)) from None
    if name in RESERVED_NAMES:
        raise InputError(
            path,
            keypath,
            f"{name!r} is reserved for a handler that is not a server "
            f"({', '.join(RESERVED_NAMES)})",
        )


def _check_servers(case: CaseFile, prof: VersionProfile, path: str | Path) -> None:
    seen: dict[str, int] = {}
    default_index: int | None = None
    for i, server in enumerate(case.servers):
        where = f"servers[{i}]"
        _check_name(server.name, path, f"{where}.name")
        if server.name in seen:
            raise InputError(
                path,
                f"{where}.name",
                f"duplicate server name {server.name!r} (also servers[{seen[server.name]}])",
            )
        seen[server.name] = i
        if not server.default:
            continue
        if not prof.default_server:
            raise InputError(
                path,
                f"{where}.default",
                f"Xen {prof.name} has no default ioreq server (removed by 2c257bd69a, "
                "first in 4.12): give it ranges, or use xen 4.6 or 4.9",
            )
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
