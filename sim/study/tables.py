"""A sweep's tables: points.csv and aggregate.csv, written and read back, and as text.

Cells are fixed text (``_format``), so identical records give identical bytes whatever
the jobs or backend. Reading back gives :class:`SweepResults`: axis columns as text,
every other column as numbers; figures and notebooks work from it alone.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.inputs import InputError, echo, read_input_text
from sim.model.runner import POINT_COLUMNS
from sim.study.stats import mean_ci95
from sim.study.sweepfile import Task

#: Columns of points.csv after the axis columns; ``error`` is empty for a good run.
POINT_META_COLUMNS = ("replication", "point_id", "seed")

#: Columns of aggregate.csv after the axis columns, before the per-metric pairs.
AGGREGATE_META_COLUMNS = ("point_id", "n", "failed")


def _format(value: Any) -> str:
    """Fixed text for a CSV cell, so identical records give identical bytes."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.10g}"
    return str(value)


def csv_text(header: Sequence[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([_format(v) for v in row] for row in rows)
    return buf.getvalue()


def points_table(
    axes: Sequence[str], tasks: list[Task], outcomes: dict[int, dict[str, Any]]
) -> tuple[list[str], list[list[Any]]]:
    header = [*axes, *POINT_META_COLUMNS, *POINT_COLUMNS, "error"]
    rows = []
    for i, task in enumerate(tasks):
        out = outcomes[i]
        record = out["record"] or {}
        error = (out["error"] or "").replace("\n", " ")
        rows.append(
            [
                *(task.point.labels[a] for a in axes),
                task.replication,
                task.point.point_id,
                task.seed,
                *(record.get(c) for c in POINT_COLUMNS),
                error,
            ]
        )
    return header, rows


def aggregate_table(
    axes: Sequence[str], tasks: list[Task], outcomes: dict[int, dict[str, Any]]
) -> tuple[list[str], list[list[Any]]]:
    header = [*axes, *AGGREGATE_META_COLUMNS]
    for c in POINT_COLUMNS:
        header += [f"{c}_mean", f"{c}_ci95"]
    by_point: dict[int, list[int]] = {}
    for i, task in enumerate(tasks):
        by_point.setdefault(task.point.index, []).append(i)
    rows = []
    for indices in by_point.values():
        point = tasks[indices[0]].point
        records = [outcomes[i]["record"] for i in indices if outcomes[i]["record"]]
        row: list[Any] = [*(point.labels[a] for a in axes), point.point_id]
        row += [len(records), len(indices) - len(records)]
        for c in POINT_COLUMNS:
            row += list(mean_ci95([float(r[c]) for r in records]))
        rows.append(row)
    return header, rows


@dataclass(frozen=True)
class SweepResults:
    """A sweep's CSVs read back: axis columns as text, every other column as numbers."""

    directory: Path
    axes: tuple[str, ...]
    points: list[dict[str, Any]]
    aggregate: list[dict[str, Any]]
    description: str
    name: str = ""  # the sweep file's name, from sweep.json ("" without one)


#: A results CSV larger than this is not one vgpu-sim wrote (MAX_RUNS rows are ~40 MB).
MAX_CSV_BYTES = 128 << 20
TEXT_COLUMNS = ("point_id", "error")
NONNEGATIVE_COLUMNS = ("n", "failed", "replication")


def _read_csv(
    path: Path, first_meta: str, required: Sequence[str]
) -> tuple[list[str], list[dict[str, Any]]]:
    """Rows of a results CSV; anything that is not what vgpu-sim writes is an InputError
    naming the line and column (a hand-edited or truncated file): text where a number
    goes, an infinity, a negative count or confidence half-width."""
    text = read_input_text(path, MAX_CSV_BYTES)
    try:
        lines = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise InputError(path, "", f"is not a CSV file: {exc}") from None
    header = lines[0] if lines else None
    if not header or first_meta not in header:
        raise InputError(path, "", f"not a sweep CSV (no {first_meta!r} column)")
    if len(set(header)) != len(header):
        raise InputError(path, "line 1", "a column name appears twice")
    missing = [c for c in required if c not in header]
    if missing:
        raise InputError(path, "line 1", f"no {missing[0]!r} column: not a sweep CSV")
    n_axes = header.index(first_meta)
    rows = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        if len(line) != len(header):
            raise InputError(
                path, f"line {lineno}", f"{len(line)} cells where the header has {len(header)}"
            )
        row: dict[str, Any] = {}
        for i, (name, cell) in enumerate(zip(header, line, strict=True)):
            if i < n_axes or name in TEXT_COLUMNS:
                row[name] = cell
                continue
            try:
                value = float(cell) if cell else math.nan
            except ValueError:
                raise InputError(
                    path, f"line {lineno}, column {echo(name)}", f"{echo(cell)} is not a number"
                ) from None
            if math.isinf(value):
                raise InputError(path, f"line {lineno}, column {echo(name)}", "is infinite")
            if value < 0 and (name.endswith("_ci95") or name in NONNEGATIVE_COLUMNS):
                raise InputError(path, f"line {lineno}, column {echo(name)}", "is negative")
            row[name] = value
        rows.append(row)
    return header[:n_axes], rows


def load_results(directory: str | Path) -> SweepResults:
    """Read ``points.csv`` and ``aggregate.csv`` of a sweep results directory."""
    d = Path(directory)
    point_columns = [*POINT_META_COLUMNS, *POINT_COLUMNS]
    axes, points = _read_csv(d / "points.csv", POINT_META_COLUMNS[0], point_columns)
    aggregate_columns = [*AGGREGATE_META_COLUMNS]
    for c in POINT_COLUMNS:
        aggregate_columns += [f"{c}_mean", f"{c}_ci95"]
    agg_axes, aggregate = _read_csv(
        d / "aggregate.csv", AGGREGATE_META_COLUMNS[0], aggregate_columns
    )
    if agg_axes != axes:
        raise InputError(
            d / "aggregate.csv", "line 1", "its axis columns differ from those of points.csv"
        )
    description = name = ""
    manifest = d / "sweep.json"
    if manifest.is_file():
        try:
            data = json.loads(read_input_text(manifest, MAX_CSV_BYTES))
            description = str(data.get("sweep", {}).get("description", "") or "")
            name = Path(str(data.get("sweep_file") or "")).stem
        except (ValueError, AttributeError, InputError):
            pass  # the manifest only adds a title; the CSVs are the results
    return SweepResults(d, tuple(axes), points, aggregate, description, name)


def format_number(x: float) -> str:
    """Plain digits for tables: no exponents for the ns and node counts shown here."""
    if not math.isfinite(x):
        return str(x)
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def format_aggregate(
    results: SweepResults,
    metrics: Sequence[str] = ("p50_ns", "p99_ns", "mean_visits", "ranges", "failed_maps"),
) -> str:
    """The aggregate as a fixed-width text table: mean ± 95% CI half-width per metric."""
    header = [*results.axes, "n", *metrics]
    body = []
    for row in results.aggregate:
        cells = [row[a] for a in results.axes] + [f"{row['n']:.0f}"]
        for m in metrics:
            mean, half = row[f"{m}_mean"], row[f"{m}_ci95"]
            ci = "" if math.isnan(half) else f" ± {format_number(half)}"
            cells.append(format_number(mean) + ci)
        body.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body, strict=True)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *body]
    ]
    return "\n".join(line.rstrip() for line in lines)
