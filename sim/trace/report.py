"""Tables of a capture summary: per-vCPU exit reasons, addresses, p2m types, round trips;
as text, CSV or JSON.

``mean_cycles`` is xenalyze's figure: the integer mean over arcs of at least one cycle
(``count`` includes arcs of 0 cycles, as xenalyze's does). Percentiles and the maximum
are over the same arcs as the mean; ``mean_us`` appears when the TSC rate is known.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import numpy as np

from sim.trace import format as fmt
from sim.trace.arcs import SVM_BIT
from sim.trace.reader import STAGES, CaptureSummary
from sim.trace.stats import CycleStats

EXIT_COLUMNS = (
    "domain",
    "vcpu",
    "exit_reason",
    "exit_reason_code",
    "count",
    "mean_cycles",
    "p50_cycles",
    "p90_cycles",
    "max_cycles",
    "total_cycles",
)
TABLES = ("exits", "addresses", "npf", "stages")


def _cycles(st: CycleStats, hz: float | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "count": st.count,
        "mean_cycles": st.mean_cycles,
        "p50_cycles": st.percentile(50),
        "p90_cycles": st.percentile(90),
        "max_cycles": st.max,
        "total_cycles": st.total,
    }
    if hz:
        row["mean_us"] = round(st.total / st.nonzero / hz * 1e6, 4) if st.nonzero else 0.0
    return row


def _reason_name(code: int) -> str:
    if code & SVM_BIT:
        return f"SVM_{code & ~SVM_BIT:#x}"
    return fmt.exit_reason_name(code)


def exit_rows(s: CaptureSummary) -> list[dict[str, Any]]:
    rows = []
    for (domain, vcpu, reason), st in s.exits.items():
        if domain == fmt.DEFAULT_DOMAIN:
            continue
        rows.append(
            {
                "domain": domain,
                "vcpu": vcpu,
                "exit_reason": _reason_name(reason),
                "exit_reason_code": reason,
                **_cycles(st, s.cpu_hz),
            }
        )
    return rows


def unattributed_arcs(s: CaptureSummary) -> int:
    """Arcs before any scheduler record on their pCPU (xenalyze's default domain)."""
    return sum(st.count for (d, _, _), st in s.exits.items() if d == fmt.DEFAULT_DOMAIN)


#: The text table shows the busiest addresses only; CSV and JSON have every one.
TEXT_ADDRESSES = 40


def address_rows(s: CaptureSummary, limit: int | None = None) -> list[dict[str, Any]]:
    """Count, mean and max cycles per (domain, port or MMIO address, direction), the
    busiest (highest count) first, ties by domain, kind, address and direction; with
    ``limit``, the first ``limit`` rows only. Built from arrays: a capture of page-table
    writes can hold a million distinct addresses."""
    keys, sums = s.addresses.arrays()  # sorted by key
    keep = keys[:, 0] != fmt.DEFAULT_DOMAIN if len(keys) else np.zeros(0, dtype=bool)
    keys, sums = keys[keep], sums[keep]
    order = np.argsort(-sums[:, 0], kind="stable")[:limit]
    keys, sums = keys[order], sums[order]
    rows = []
    for (d, kind, addr, write), (count, nonzero, total, biggest) in zip(
        keys.tolist(), sums.tolist(), strict=True
    ):
        row: dict[str, Any] = {
            "domain": d,
            "kind": "pio" if kind == 1 else "mmio",
            "address": f"{addr & (2**64 - 1):#x}",
            "dir": "write" if write else "read",
            "count": count,
            "mean_cycles": total // nonzero if nonzero else 0,
            "max_cycles": biggest,
            "total_cycles": total,
        }
        if s.cpu_hz:
            row["mean_us"] = round(total / nonzero / s.cpu_hz * 1e6, 4) if nonzero else 0.0
        rows.append(row)
    return rows


def npf_rows(s: CaptureSummary) -> list[dict[str, Any]]:
    return [
        {"domain": d, "p2m_type": p, "p2m_name": fmt.p2m_type_name(p), **_cycles(st, s.cpu_hz)}
        for (d, p), st in s.npf.items()
        if d != fmt.DEFAULT_DOMAIN
    ]


def stage_rows(s: CaptureSummary) -> list[dict[str, Any]]:
    return [
        {"domain": d, "stage": name, **_cycles(s.stages[d][name], s.cpu_hz)}
        for d in sorted(s.stages)
        for name in STAGES
    ]


_BUILDERS = {"exits": exit_rows, "addresses": address_rows, "npf": npf_rows, "stages": stage_rows}


def table(s: CaptureSummary, name: str) -> list[dict[str, Any]]:
    """One of :data:`TABLES`, built alone (the address table can be large)."""
    return _BUILDERS[name](s)


def all_tables(s: CaptureSummary) -> dict[str, list[dict[str, Any]]]:
    return {name: table(s, name) for name in TABLES}


def to_csv(rows: list[dict[str, Any]], columns: tuple[str, ...] | None = None) -> str:
    out = io.StringIO()
    if not rows and columns is None:
        return ""
    cols = list(columns or rows[0].keys())
    if rows and "mean_us" in rows[0] and "mean_us" not in cols:
        cols.append("mean_us")
    w = csv.DictWriter(out, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return out.getvalue()


def to_json(s: CaptureSummary) -> str:
    doc = {
        "capture": s.path,
        "bytes": s.file_size,
        "records": s.records,
        "pcpus": s.pcpus,
        "first_tsc": s.first_tsc,
        "last_tsc": s.last_tsc,
        "cpu_hz": s.cpu_hz,
        "lost_records": s.lost_records,
        "lost_record_events": s.lost_events,
        "unattributed_arcs": unattributed_arcs(s),
        "warnings": s.warnings,
        "xenalyze_differences": s.problems,
        **all_tables(s),
    }
    return json.dumps(doc, indent=2) + "\n"


def _text_table(rows: list[dict[str, Any]], cols: list[str]) -> list[str]:
    cells = [[str(r[c]) for c in cols] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return lines


def _addresses_title(s: CaptureSummary) -> str:
    keys, _ = s.addresses.arrays()
    n = int((keys[:, 0] != fmt.DEFAULT_DOMAIN).sum()) if len(keys) else 0
    if n > TEXT_ADDRESSES:
        return (
            f"Port and MMIO addresses, the {TEXT_ADDRESSES} busiest of {n:,} "
            "(--format csv --table addresses lists every one)"
        )
    return "Port and MMIO addresses, busiest first"


def to_text(s: CaptureSummary) -> str:
    span = s.last_tsc - s.first_tsc
    secs = f", {span / s.cpu_hz:.3f} s" if s.cpu_hz else ""
    lines = [
        f"{s.path}: {s.records:,} records, {len(s.pcpus)} pCPUs, {span:,} TSC cycles{secs}; "
        f"lost records: {s.lost_records:,} ({s.lost_events} losses)"
    ]
    us = ["mean_us"] if s.cpu_hz else []
    sections = [
        ("Exit reasons", exit_rows(s), ["domain", "vcpu", "exit_reason", "count", "mean_cycles",
                                         "p50_cycles", "p90_cycles", "max_cycles", *us]),
        (_addresses_title(s), address_rows(s, TEXT_ADDRESSES),
         ["domain", "kind", "address", "dir", "count", "mean_cycles", *us]),
        ("EPT violations by p2m type", npf_rows(s), ["domain", "p2m_type", "p2m_name",
                                                      "count", "mean_cycles", *us]),
        ("ioreq round trip (exit -> dom0 running -> device model done -> guest running)",
         stage_rows(s), ["domain", "stage", "count", "mean_cycles", "p50_cycles",
                         "p90_cycles", *us]),
    ]  # fmt: skip
    for title, rows, cols in sections:
        lines.append("")
        lines.append(f"{title}:")
        lines += _text_table(rows, cols) if rows else ["  (none)"]
    n = unattributed_arcs(s)
    if n:
        lines.append("")
        lines.append(
            f"{n} arcs came before any scheduler record on their pCPU and belong to no "
            "domain (xenalyze's default domain)"
        )
    return "\n".join(lines) + "\n"
