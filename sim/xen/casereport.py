"""Running a ``select`` case file: build the domain, route every access, report.

The servers of a :class:`~sim.xen.casefile.CaseFile` are created in order and their
ranges mapped through Xen's hypercall semantics (a map Xen would refuse becomes a
warning); every access is routed by :meth:`sim.xen.ioreq.IoreqDomain.route` in order, and
the outcome is compared with what the case expects. The report is the table
``vgpu-sim select`` prints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TextIO

from sim.xen.abi import PAGE_SHIFT, RangeType, format_ioreq
from sim.xen.casefile import (
    ERRNO_REASONS,
    RESERVED_NAMES,
    AccessSpec,
    CaseFile,
    ServerSpec,
    load_case_file,
)
from sim.xen.ioreq import Access, Design, HypercallError, IoreqDomain, IoreqServer, Route


@dataclass(frozen=True)
class Outcome:
    """One routed access and how it compares with what the case expected."""

    index: int
    spec: AccessSpec
    route: Route
    failures: tuple[str, ...]

    @property
    def expectations(self) -> int:
        spec = self.spec
        return sum(x is not None for x in (spec.expect, spec.expect_visits, spec.expect_ioreq))


@dataclass(frozen=True)
class CaseRun:
    case: CaseFile
    warnings: tuple[str, ...]
    servers: tuple[IoreqServer, ...]
    outcomes: tuple[Outcome, ...]

    @property
    def expectations(self) -> int:
        return sum(o.expectations for o in self.outcomes)

    @property
    def failures(self) -> list[tuple[int, str]]:
        return [(o.index, f) for o in self.outcomes for f in o.failures]


def build_domain(case: CaseFile) -> tuple[IoreqDomain, list[str]]:
    """Create the servers in order and map their ranges; refused maps become warnings."""
    domain = IoreqDomain(
        case.design, case.rangeset, case.max_nr_io_ranges, case.vendor, case.mmio_window
    )
    warnings: list[str] = []
    for i, spec in enumerate(case.servers):
        server = domain.create_server(spec.name, default=spec.default, enabled=spec.enabled)
        for keypath, what, call in _map_calls(domain, server, spec, f"servers[{i}]"):
            try:
                call()
            except HypercallError as exc:
                reason = ERRNO_REASONS.get(exc.errno_name, "refused")
                warnings.append(
                    f"warning: {keypath}: {spec.name} could not {what}: "
                    f"-{exc.errno_name}, {reason}; skipped"
                )
    return domain, warnings


def _map_calls(
    domain: IoreqDomain, server: IoreqServer, spec: ServerSpec, where: str
) -> Iterator[tuple[str, str, Callable[[], int]]]:
    """``(key path, description, hypercall)`` for each range, in the order mapped."""
    for key, rtype in (("port", RangeType.PORT), ("memory", RangeType.MEMORY)):
        for j, (s, e) in enumerate(getattr(spec, key)):
            yield (
                f"{where}.{key}[{j}]",
                f"map {rtype.name} [{s:#x}, {e:#x}]",
                partial(domain.map_io_range, server, rtype, s, e),
            )
    for j, slot in enumerate(spec.pci):
        sbdf = slot.sbdf
        yield (
            f"{where}.pci[{j}]",
            f"map PCI {slot} (sbdf {sbdf:#x})",
            partial(domain.map_io_range, server, RangeType.PCI, sbdf, sbdf),
        )
    for j, (first, last) in enumerate(spec.wp_pages):
        yield (
            f"{where}.wp_pages[{j}]",
            f"write-protect gfns {first:#x}..{last:#x} ({_wp_tracking(domain, first, last)})",
            partial(domain.write_protect, server, first, last),
        )


def _wp_tracking(domain: IoreqDomain, first: int, last: int) -> str:
    """Where the design keeps write-protected pages, for the warning text."""
    if domain.design is Design.XEN_46:
        return f"MEMORY [{first << PAGE_SHIFT:#x}, {((last + 1) << PAGE_SHIFT) - 1:#x}]"
    if domain.design is Design.WP_SPLIT:
        return "WP_MEM, by gfn"
    return "as p2m type p2m_ioreq_server"


def _failures(spec: AccessSpec, route: Route) -> tuple[str, ...]:
    failures = []
    if spec.expect is not None and route.handler != spec.expect:
        failures.append(f"expected handler {spec.expect}, got {route.handler}")
    if spec.expect_visits is not None and route.visits != spec.expect_visits:
        failures.append(f"expected {spec.expect_visits} visits, got {route.visits}")
    wanted = spec.expect_ioreq
    if wanted is not None and (wanted.ioreq_type, wanted.addr) != (route.ioreq_type, route.addr):
        got = format_ioreq(route.ioreq_type, route.addr)
        failures.append(f"expected ioreq {wanted}, got {got}")
    return tuple(failures)


def run_case(case: CaseFile) -> CaseRun:
    """Build the domain and route every access in order (CF8 latching is stateful)."""
    domain, warnings = build_domain(case)
    outcomes = []
    for i, spec in enumerate(case.accesses):
        access = Access(
            spec.type, spec.addr, spec.size, spec.is_write, spec.count, spec.df, spec.data
        )
        route = domain.route(access)
        outcomes.append(Outcome(i, spec, route, _failures(spec, route)))
    return CaseRun(case, tuple(warnings), tuple(domain.servers), tuple(outcomes))


def _ok_mark(out: TextIO) -> str:
    encoding = getattr(out, "encoding", None) or "utf-8"
    try:
        "✓".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return "ok"
    return "✓"


def _table(run: CaseRun, ok_mark: str) -> list[str]:
    case = run.case
    show_data = any(o.spec.data is not None for o in run.outcomes)
    show_p2m = case.design != "xen-4.6"
    show_check = run.expectations > 0
    header = ["#", "type", "dir", "addr", "size", "handler", "ioreq", "visits", "tried"]
    if show_data:
        header.insert(5, "data")
    if show_p2m:
        header.insert(header.index("tried"), "p2m")
    if show_check:
        header.append("check")
    header.append("note")
    rows = []
    for o in run.outcomes:
        spec, route = o.spec, o.route
        sent = route.handler not in RESERVED_NAMES  # the null handler and RAM send nothing
        cell = {
            "#": str(o.index),
            "type": spec.type,
            "dir": spec.dir + (" df" if spec.df else ""),
            "addr": f"{spec.addr:#x}",
            "size": f"{spec.size}x{spec.count}",
            "data": ""
            if spec.data is None
            else f"{spec.data:#x}" + (" latched" if route.cf8_latched else ""),
            "handler": route.handler,
            "ioreq": format_ioreq(route.ioreq_type, route.addr) if sent else "-",
            "visits": str(route.visits),
            "p2m": str(route.p2m_lookups),
            "tried": " ".join(f"{name}:{v}" for name, v in route.tried) or "-",
            "check": ("MISMATCH" if o.failures else ok_mark) if o.expectations else "",
            "note": spec.note or "",
        }
        rows.append([cell[column] for column in header])
    widths = [max(len(row[c]) for row in [header, *rows]) for c in range(len(header))]
    numeric = {"#", "visits", "p2m"}

    def line(row: list[str]) -> str:
        cells = [
            text.rjust(width) if column in numeric else text.ljust(width)
            for column, text, width in zip(header, row, widths, strict=True)
        ]
        return "  ".join(cells).rstrip()

    return [line(header), *(line(row) for row in rows)]


def _rangeset_lines(run: CaseRun) -> list[str]:
    lines = []
    for server in run.servers:
        if server.is_default:
            lines.append(f"  {server.name}: default server (no ranges)")
            continue
        state = "" if server.enabled else " (disabled)"
        sets = [r.format() for r in server.rangesets.values() if len(r)]
        lines.append(f"  {server.name}{state}: " + ("; ".join(sets) if sets else "no ranges"))
    return lines


def format_report(path: str | Path, run: CaseRun, verbose: bool, ok_mark: str = "ok") -> str:
    """The text ``vgpu-sim select`` prints for one case file."""
    case = run.case
    lines = []
    if verbose:
        limit = "unlimited" if case.max_nr_io_ranges is None else case.max_nr_io_ranges
        lines.append(
            f"{path}: design {case.design}, rangeset {case.rangeset}, vendor {case.vendor}, "
            f"max_nr_io_ranges {limit}, mmio_window {case.mmio_window}"
        )
        if case.description:
            lines.extend(f"  {text}" for text in case.description.strip().splitlines())
        lines.extend(run.warnings)
        lines.append("servers in creation order (Xen asks the newest first):")
        lines.extend(_rangeset_lines(run) or ["  (none: every access goes to the null handler)"])
        lines.extend(_table(run, ok_mark))
    for index, failure in run.failures:
        spec = run.case.accesses[index]
        lines.append(
            f"MISMATCH {path}: accesses[{index}] ({spec.type} {spec.dir} {spec.addr:#x}): {failure}"
        )
    lines.append(
        f"{path}: {len(run.outcomes)} accesses, {run.expectations} expectations, "
        f"{len(run.failures)} failed"
    )
    return "\n".join(lines) + "\n"


def run_case_file(path: Path, out: TextIO, verbose: bool) -> int:
    """Validate, route and report one case file: 0 if every expectation holds, else 1.

    Raises :class:`InputError` for a bad file, before anything is written to ``out``.
    """
    case = load_case_file(path)
    run = run_case(case)
    out.write(format_report(path, run, verbose, _ok_mark(out)))
    return 1 if run.failures else 0
