"""Figures and their inputs (issue #9, items 14 and 30).

``plot`` reads CSVs a person may have edited: anything that is not what vgpu-sim writes is
exit 2 with the line and column. A sweep that does not vary the page count is drawn
against its axis; titles name the sweep, not the results directory; the failed-map ring
has a colour no series has.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from matplotlib.collections import PathCollection
from matplotlib.colors import to_rgba

from sim.cli import main
from sim.study.plot import RING_COLOR, latency_figure, series_table, x_of
from sim.study.sweep import run_sweep
from sim.study.sweepfile import load_sweep
from sim.study.tables import load_results

ROOT = Path(__file__).resolve().parent.parent
RANGE_COUNT = ROOT / "results" / "sweeps" / "range-count"


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A copy of the committed range-count results, to damage."""
    out = tmp_path / "rc"
    out.mkdir()
    for name in ("points.csv", "aggregate.csv", "sweep.json"):
        shutil.copy(RANGE_COUNT / name, out / name)
    return out


def damage(path: Path, line: int, change: Any) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] = change(lines[line - 1], lines[0].split(b","))
    path.write_bytes(b"\n".join(lines))


def cell(column: str, value: bytes) -> Any:
    """A change that sets one column of a row (no quoted commas in these rows' numbers)."""

    def change(row: bytes, header: list[bytes]) -> bytes:
        cells = row.split(b",")
        # Axis labels may hold commas inside quotes: count from the end.
        cells[len(cells) - len(header) + header.index(column.encode())] = value
        return b",".join(cells)

    return change


CORRUPTIONS = {
    "not utf-8": ("aggregate.csv", 3, lambda b, h: b + b"\xff", "", "is not UTF-8 text"),
    "a short row": ("points.csv", 4, lambda b, h: b.rsplit(b",", 3)[0], "line 4", "cells where"),
    "not a number": (
        "aggregate.csv",
        3,
        cell("n", b"three"),
        "line 3, column 'n'",
        "'three' is not a number",
    ),
    "infinite": (
        "aggregate.csv",
        2,
        cell("wp_pages_mean", b"inf"),
        "line 2, column 'wp_pages_mean'",
        "is infinite",
    ),
    "a negative confidence half-width (found by make fuzz)": (
        "aggregate.csv",
        2,
        cell("wp_pages_ci95", b"-1"),
        "line 2, column 'wp_pages_ci95'",
        "is negative",
    ),
    "a missing column": (
        "aggregate.csv",
        1,
        lambda b, h: b.replace(b"p50_ns_mean", b"p50"),
        "line 1",
        "no 'p50_ns_mean' column",
    ),
    "a duplicated column": (
        "points.csv",
        1,
        lambda b, h: b.replace(b"p99_ns", b"p50_ns"),
        "line 1",
        "a column name appears twice",
    ),
    "other axes": (
        "aggregate.csv",
        1,
        lambda b, h: b.replace(b"variant", b"design", 1),
        "line 1",
        "axis columns differ",
    ),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_plot_of_a_damaged_csv_is_bad_input(
    case: str, results: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 14: ValueError / UnicodeDecodeError tracebacks before."""
    name, line, change, keypath, problem = CORRUPTIONS[case]
    damage(results / name, line, change)
    assert main(["plot", str(results)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith(f"vgpu-sim: error: {results / name}: {keypath}".rstrip())
    assert problem in err
    assert not (results / "latency_vs_ranges.png").exists()


def test_plot_of_the_committed_results_still_works(results: Path) -> None:
    assert main(["plot", str(results)]) == 0


def tiny_sweep(tmp_path: Path) -> Path:
    """Two designs at one page count: nothing varies the pages."""
    data = {
        "schema_version": 1,
        "description": "same pages",
        "base": {
            "schema_version": 1,
            "name": "b",
            "platform": "hsw",
            "duration_ms": 3,
            "xen": {"max_nr_io_ranges": 4},
            "guests": [{"name": "vm1", "vgpu": {"ppgtt": {"live_pages": 8, "pages_per_ppgtt": 8}}}],
        },
        "axes": {"xen.rangeset": ["list", "rbtree"], "xen.design": ["xen-4.6", "wp-split"]},
        "replications": 2,
        "seed": 3,
    }
    path = tmp_path / "same-pages.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_sweep_that_does_not_vary_pages_is_drawn_against_its_axis(tmp_path: Path) -> None:
    """Item 30: every series sat at one x on a log axis; titles named the --out directory."""
    sweep = load_sweep(tiny_sweep(tmp_path))
    for out in ("one", "two"):
        run_sweep(sweep, tmp_path / out, jobs=1, progress="none", plot=True)
    res = load_results(tmp_path / "one")
    assert x_of(res) == "xen.rangeset"
    fig = latency_figure(res)
    ax = fig.axes[0]
    assert ax.get_xscale() == "linear"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["list", "rbtree"]
    assert fig._suptitle.get_text() == "Trap latency vs xen.rangeset — same-pages: same pages"
    assert "(1) design=xen-4.6" in series_table(res, "p50_ns")
    # Identical sweeps draw identical figures, wherever they are written.
    for name in ("latency_vs_ranges.svg", "visits_vs_ranges.svg"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_the_failed_map_ring_has_a_colour_of_its_own() -> None:
    """Item 30: the ring was the red of a series (tab10's C3)."""
    res = load_results(RANGE_COUNT)
    ax = latency_figure(res).axes[0]
    series_colours = {to_rgba(line.get_color()) for line in ax.get_lines()}
    rings = [c for c in ax.collections if isinstance(c, PathCollection)]  # ax.scatter
    assert rings, "the committed results have failed maps"
    ring_colours = {tuple(e) for c in rings for e in c.get_edgecolor()}
    assert ring_colours == {to_rgba(RING_COLOR)}
    assert to_rgba(RING_COLOR) not in series_colours
    # tab10, the series' cycle, has no black: so it holds for any number of series.
    assert all(to_rgba(f"C{i}") != to_rgba(RING_COLOR) for i in range(10))
