"""The report ``vgpu-sim select`` prints for a case file, and running one file for the CLI.

One table per file: a row per request (an access split into several shows ``3.0``,
``3.1``, ...) and a row per step (``do``). Columns: the access, the handler (a server,
``none``, ``ram``, ``xen:EMULATOR``, ``retry`` or ``crash``), the request as Xen sends it,
``emul`` (Xen's ``io_handler[]`` entries walked), the rangeset nodes visited, the p2m
lookups, the servers asked with their visits, and the check.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from sim.xen.abi import format_ioreq
from sim.xen.casefile import load_case_file
from sim.xen.caserun import CaseRun, Outcome, StepOutcome, handler_text, rc_text, run_case
from sim.xen.ioreq import NOT_SERVERS
from sim.xen.profiles import Design, design_label

__all__ = ["format_report", "run_case", "run_case_file"]

NUMERIC = {"#", "emul", "visits", "p2m"}


def _ok_mark(out: TextIO) -> str:
    encoding = getattr(out, "encoding", None) or "utf-8"
    try:
        "✓".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return "ok"
    return "✓"


def _access_rows(o: Outcome, ok_mark: str) -> list[dict[str, str]]:
    spec = o.spec
    rows = []
    many = len(o.requests) > 1
    for j, r in enumerate(o.requests):
        route = r.route
        sent = route.handler not in NOT_SERVERS  # only a server gets an ioreq
        ioreq = format_ioreq(route.ioreq_type, route.addr) if sent else "-"
        checked = r.checks is not None and r.checks.count_checks
        note = (r.checks.note if r.checks is not None else None) or (spec.note if j == 0 else "")
        rows.append(
            {
                "#": f"{o.index}.{j}" if many else str(o.index),
                "type": spec.type if j == 0 else "",
                "dir": (spec.dir + (" df" if spec.df else "") + (" rmw" if spec.rmw else ""))
                if j == 0
                else "",
                "addr": f"{r.request.addr:#x}",
                "size": f"{r.request.size}x{r.request.count}",
                "data": ""
                if spec.data is None or j
                else f"{spec.data:#x}" + (" latched" if route.cf8_latched else ""),
                "handler": handler_text(route),
                "ioreq": ioreq + (" buffered" if route.buffered else ""),
                "emul": str(route.emulators_checked),
                "visits": str(route.visits),
                "p2m": str(route.p2m_lookups),
                "tried": " ".join(f"{name}:{v}" for name, v in route.tried) or "-",
                "check": ("MISMATCH" if r.failures else ok_mark) if checked else "",
                "note": note or "",
            }
        )
    return rows


def _step_row(o: StepOutcome, ok_mark: str) -> dict[str, str]:
    return {
        "#": str(o.index),
        "type": "do",
        "dir": o.spec.do,
        "addr": "-",
        "size": "-",
        "data": "",
        "handler": f"rc {rc_text(o.rc)}",
        "ioreq": "-",
        "emul": "-",
        "visits": str(o.visits) if o.visits else "-",
        "p2m": "-",
        "tried": o.target,
        "check": ("MISMATCH" if o.failures else ok_mark) if o.expectations else "",
        "note": o.spec.note or "",
    }


def _table(run: CaseRun, ok_mark: str) -> list[str]:
    rows: list[dict[str, str]] = []
    for item in run.items:
        if isinstance(item, StepOutcome):
            rows.append(_step_row(item, ok_mark))
        else:
            rows.extend(_access_rows(item, ok_mark))
    header = ["#", "type", "dir", "addr", "size", "handler", "ioreq", "emul", "visits", "tried"]
    if any(o.spec.data is not None for o in run.outcomes):
        header.insert(5, "data")
    show_p2m = run.design is not Design.XEN_46 or run.profile.p2m_ioreq_server
    if show_p2m:
        header.insert(header.index("tried"), "p2m")
    if run.expectations:
        header.append("check")
    header.append("note")
    cells = [[row[column] for column in header] for row in rows]
    widths = [max(len(r[c]) for r in [header, *cells]) for c in range(len(header))]

    def line(row: list[str]) -> str:
        out = [
            text.rjust(width) if column in NUMERIC else text.ljust(width)
            for column, text, width in zip(header, row, widths, strict=True)
        ]
        return "  ".join(out).rstrip()

    return [line(header), *(line(row) for row in cells)]


def _describe_item(run: CaseRun, index: int) -> str:
    item = run.case.accesses[index]
    if hasattr(item, "do"):
        return f"do {item.do}" + (f" {item.server}" if item.server else "")
    return f"{item.type} {item.dir} {item.addr:#x}"


def summary_line(path: str | Path, run: CaseRun) -> str:
    steps = sum(isinstance(o, StepOutcome) for o in run.items)
    counts = f"{len(run.outcomes)} accesses" + (f", {steps} steps" if steps else "")
    return (
        f"{path}: xen {run.profile.name}: {counts}, {run.expectations} expectations, "
        f"{len(run.failures)} failed"
    )


def format_report(path: str | Path, run: CaseRun, verbose: bool, ok_mark: str = "ok") -> str:
    """The text ``vgpu-sim select`` prints for one case file."""
    case, prof = run.case, run.profile
    lines = []
    if verbose:
        limit = "unlimited" if case.max_nr_io_ranges is None else case.max_nr_io_ranges
        vendor = case.vendor + (f" family {case.amd_family:#x}" if case.vendor == "amd" else "")
        lines.append(
            f"{path}: {design_label(prof, run.design)}, rangeset {case.rangeset}, "
            f"vendor {vendor}, max_nr_io_ranges {limit}"
        )
        internal = run.domain.internal
        lines.append(
            f"  Xen's own emulators: {internal.count} io_handler[] entries, asked first "
            f"(acpi {'on' if case.acpi else 'off'}, stdvga cache "
            f"{'on' if case.stdvga_cache else 'off'})"
        )
        if case.description:
            lines.extend(f"  {text}" for text in case.description.strip().splitlines())
        lines.extend(run.warnings)
        order = "newest first" if prof.server_ids == "counter" else "from slot 7 down"
        lines.append(f"servers after setup, in the order Xen asks them ({order}):")
        lines.extend(run.setup or ["  (none: every request Xen does not emulate is dropped)"])
        lines.extend(_table(run, ok_mark))
    for index, failure in run.failures:
        lines.append(
            f"MISMATCH {path}: accesses[{index}] ({_describe_item(run, index)}): {failure}"
        )
    lines.append(summary_line(path, run))
    return "\n".join(lines) + "\n"


def run_case_file(path: Path, out: TextIO, verbose: bool) -> int:
    """Validate, route and report one case file: 0 if every expectation holds, else 1.

    Raises :class:`InputError` for a bad file, before anything is written to ``out``.
    """
    case = load_case_file(path)
    run = run_case(case, path)
    out.write(format_report(path, run, verbose, _ok_mark(out)))
    return 1 if run.failures else 0
