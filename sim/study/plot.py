"""Figures of a sweep, drawn from its CSVs only (so ``vgpu-sim plot DIR`` can redraw them).

Two kinds: a sweep whose points differ in the number of vGPUs (``vgpus``, the guests of
a point) gets ``latency_vs_vgpus`` (trap latency p50 and p99, and dom0's vCPU
utilisation, against the number of vGPUs; one row of panels per platform); any other
sweep gets ``latency_vs_ranges`` and ``visits_vs_ranges``, against page counts.

For the page-count figures, the x axis is ``wp_pages``, the write-protected page-table
pages a point asks for, not ``ranges``. Under Xen 4.6 semantics with scattered pages
and no node limit the two are the same (one rangeset node per page, plus the BAR and
port nodes); but a node limit caps ``ranges``, and p2m-ioreq-server keeps pages out of
every rangeset (3 nodes at any page count), so plotted against ``ranges`` those designs
would collapse onto one x value. A sweep that does not vary the page count (one
``wp_pages`` for every point) is drawn against its first axis that has several values
instead, one tick per value, so that its lines do not stack at one x. Points that failed
maps are ringed in black, a colour no series uses. Titles name the sweep file and its
description, never the results directory, so identical sweeps draw identical figures
wherever they are written.

Figures are built on :class:`matplotlib.figure.Figure` without pyplot: no global state,
and no backend is chosen here, so this works headless and in notebooks alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from sim.model.scenario import PLATFORMS, load_preset
from sim.results import save_figure
from sim.study.tables import SweepResults, format_number, load_results

FIGURE_NAMES = ("latency_vs_ranges", "visits_vs_ranges")
VGPU_FIGURE_NAMES = ("latency_vs_vgpus",)
X_LABEL = "write-protected PPGTT pages per vGPU (log scale)"
X_NOTE = (
    "x = pages the point write-protects. Under xen-4.6 each scattered page is one node of "
    "the XenGT MEMORY rangeset (ranges ≈ pages);\na node limit caps the nodes (later maps "
    "fail), and p2m-ioreq-server keeps pages out of rangesets (3 nodes). points.csv has both."
)
FAILED_LABEL = "maps failed (-ENOMEM): pages past the limit are not write-protected"
#: The ring around points that failed maps; series colours are "C0".."C9" (tab10), which
#: has no black, so a ring is never mistaken for a series.
RING_COLOR = "black"
PAGES = "wp_pages"


def platform_pages() -> dict[str, int]:
    """Live page-table pages per vGPU of each platform preset (HSW 300, BDW 3000)."""
    return {p: int(load_preset(p)["ppgtt"]["live_pages"]) for p in PLATFORMS}


def _looks_like_keypath(axis: str) -> bool:
    return "." in axis or "[" in axis


def x_axes(results: SweepResults, x: str = "wp_pages") -> set[str]:
    """Axes whose value fixes the x value (the page count, or with ``x="vgpus"`` the
    number of vGPUs), so they do not split series.

    An axis is one when every one of its values maps to a single x value and its
    values give more than one: the page-count axis itself, or ``platform`` when the
    presets' page counts are used.
    """
    found = set()
    rows = [r for r in results.aggregate if not math.isnan(r[f"{x}_mean"])]
    for axis in results.axes:
        pages: dict[str, set[float]] = {}
        for r in rows:
            pages.setdefault(r[axis], set()).add(r[f"{x}_mean"])
        distinct = {p for ps in pages.values() for p in ps}
        if len(distinct) > 1 and all(len(ps) == 1 for ps in pages.values()):
            found.add(axis)
    return found


def x_of(results: SweepResults) -> str:
    """What the page-count figures' x axis shows: ``wp_pages`` when points ask for
    several page counts, else the first axis with several values (one tick per value),
    else ``wp_pages``."""
    rows = [r for r in results.aggregate if not math.isnan(r["wp_pages_mean"])]
    if len({r["wp_pages_mean"] for r in rows}) > 1:
        return PAGES
    return next((a for a in results.axes if len({r[a] for r in rows}) > 1), PAGES)


def _x_value(results: SweepResults, x: str) -> Any:
    """row -> its x: a ``<x>_mean`` column, or the position of its value on axis ``x``."""
    if x not in results.axes:
        return lambda r: r[f"{x}_mean"]
    order = list(dict.fromkeys(r[x] for r in results.aggregate))
    return lambda r: float(order.index(r[x]))


def _tick_names(results: SweepResults, x: str, xs: list[float]) -> list[str]:
    if x not in results.axes:
        return [f"{v:g}" for v in xs]
    order = list(dict.fromkeys(r[x] for r in results.aggregate))
    return [order[int(v)] for v in xs]


def series(
    results: SweepResults, x: str = "wp_pages", skip: set[str] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Aggregate rows grouped into lines (one per combination of the non-x axes, less
    ``skip``), in the sweep's order, each sorted by ``x``; points with no result are
    left out. With ``x="wp_pages"`` for a sweep that asks for one page count, the x is
    the axis :func:`x_of` picks.
    """
    if x == PAGES:
        x = x_of(results)
    skip = (x_axes(results, x) if x not in results.axes else {x}) | (skip or set())
    at = _x_value(results, x)
    out: dict[str, list[dict[str, Any]]] = {}
    for row in results.aggregate:
        if math.isnan(row[f"{PAGES if x in results.axes else x}_mean"]):
            continue
        parts = [
            f"{a.rsplit('.', 1)[-1]}={row[a]}" if _looks_like_keypath(a) else row[a]
            for a in results.axes
            if a not in skip
        ]
        out.setdefault(" · ".join(parts) or "all points", []).append(row)
    for rows in out.values():
        rows.sort(key=at)
    return out


def series_table(results: SweepResults, metric: str, scale: float = 1.0) -> str:
    """One row per page count, one column per line of the figures: mean ± 95% CI of
    ``metric`` divided by ``scale``; the columns are numbered, with a key below."""
    lines = series(results)
    x_name = x_of(results)
    at = _x_value(results, x_name)
    xs = sorted({at(r) for rows in lines.values() for r in rows})
    header = ["pages" if x_name == PAGES else x_name, *(f"({i})" for i in range(1, len(lines) + 1))]
    body = []
    for x, name in zip(xs, _tick_names(results, x_name, xs), strict=True):
        cells = [name]
        for rows in lines.values():
            row = next((r for r in rows if at(r) == x), None)
            if row is None:
                cells.append("-")
                continue
            mean, half = row[f"{metric}_mean"] / scale, row[f"{metric}_ci95"] / scale
            ci = "" if math.isnan(half) else f" ± {format_number(half)}"
            cells.append(format_number(mean) + ci)
        body.append(cells)
    widths = [max(len(c) for c in col) for col in zip(header, *body, strict=True)]
    text = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *body]]
    text += [f"({i}) {label}" for i, label in enumerate(lines, start=1)]
    return "\n".join(text)


def _ci(values: Sequence[float]) -> list[float]:
    return [0.0 if math.isnan(v) else v for v in values]


MARKERS = "osD^vP*Xh<>"
STYLES = ("-", "--", "-.", ":")


def _line(
    ax: Any,
    rows: list[dict[str, Any]],
    x: str,
    metric: str,
    scale: float,
    index: int,
    style: str,
    small: bool = False,
    at: Any = None,
) -> tuple[Any, list[float], list[float]]:
    """One series as a line with 95% CI bars; returns the line and its x and y. ``at``:
    a row's x, when it is not the ``<x>_mean`` column."""
    xs = [at(r) if at is not None else r[f"{x}_mean"] for r in rows]
    ys = [r[f"{metric}_mean"] / scale for r in rows]
    err = [e / scale for e in _ci([r[f"{metric}_ci95"] for r in rows])]
    line = ax.errorbar(
        xs,
        ys,
        yerr=err,
        marker=MARKERS[index % len(MARKERS)],
        markersize=4 if small else 5,
        capsize=2 if small else 3,
        linewidth=1.3 if small else 1.5,
        color=f"C{index % 10}",
        linestyle=style,
    )
    return line, xs, ys


def _draw_metric(
    ax: Any, results: SweepResults, metric: str, scale: float, ylabel: str, title: str
) -> list[tuple[Any, str]]:
    """One panel: a line per series with 95% CI bars, failed maps ringed in black."""
    handles: list[tuple[Any, str]] = []
    any_failed = False
    x_name = x_of(results)
    at = _x_value(results, x_name)
    for i, (label, rows) in enumerate(series(results).items()):
        # Dashes differ too, so a line drawn over an identical one (a limited variant
        # below its limit) leaves the one beneath visible.
        style = STYLES[i % len(STYLES)]
        line, x, y = _line(ax, rows, x_name, metric, scale, i, style, at=at)
        handles.append((line, label))
        failed = [
            (xi, yi) for xi, yi, r in zip(x, y, rows, strict=True) if r["failed_maps_mean"] > 0
        ]
        if failed:
            any_failed = True
            ax.scatter(
                *zip(*failed, strict=True),
                s=140,
                facecolors="none",
                edgecolors=RING_COLOR,
                linewidths=1.6,
                zorder=5,
            )
    if any_failed:
        ring = Line2D(
            [], [], ls="none", marker="o", markersize=11, mfc="none", mec=RING_COLOR, mew=1.6
        )
        handles.append((ring, FAILED_LABEL))
    # Ticks at the x values the sweep ran, in plain numbers, with room for the tags.
    xs = sorted({at(r) for rows in series(results).values() for r in rows})
    if x_name != PAGES or min(xs) <= 0:  # categories, or a page count of 0: linear
        low, high = min(xs) - 0.5, max(xs) + 0.5
    else:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        low, high = min(xs) / 1.4, max(xs) * 1.6
    ax.set_xticks(xs, _tick_names(results, x_name, xs))
    ax.set_xlim(low, high)
    # The platforms' page counts, where they fall inside the sweep's range.
    for name, pages in platform_pages().items():
        if x_name != PAGES or not low < pages < high:
            continue
        ax.axvline(pages, color="0.45", ls=":", lw=1.2, zorder=0)
        ax.annotate(
            f"{name.upper()} {pages}",
            xy=(pages, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -3),
            textcoords="offset points",
            va="top",
            fontsize=8,
            color="0.3",
        )
    ax.set_xlabel(X_LABEL if x_name == PAGES else x_name)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.grid(True, which="major", alpha=0.3)
    return handles


def _finish(
    fig: Figure, bottom: Any, handles: list[tuple[Any, str]], title: str, results: SweepResults
) -> Figure:
    """Title, the legend in its own band below the panels (never over data), the note."""
    fig.suptitle(title, fontsize=13)
    bottom.legend(
        [h for h, _ in handles],
        [label for _, label in handles],
        loc="upper center",
        ncols=2 if len(handles) > 3 else max(len(handles), 1),
        fontsize=9,
        frameon=False,
    )
    x_name = x_of(results)
    if x_name == PAGES:
        note = X_NOTE
    else:
        pages = {f"{r['wp_pages_mean']:g}" for r in results.aggregate} - {"nan"}
        note = f"Every point write-protects {', '.join(sorted(pages))} pages; x = {x_name}."
    bottom.text(0.5, 0.02, note, ha="center", va="bottom", fontsize=8, color="0.3")
    return fig


def _panels(n_handles: int) -> tuple[Figure, Any, Any, Any]:
    """A figure with two panels side by side and a band below for legend and note."""
    legend_rows = -(-n_handles // 2)
    band = 0.55 + 0.22 * legend_rows  # inches: the note plus one row per legend line
    fig = Figure(figsize=(12, 5.2 + band), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[5.2, band])
    left, right = top.subplots(1, 2)
    return fig, left, right, bottom


def _y_scale(ax: Any, values: Sequence[float] | None = None) -> None:
    """Log y (labelled 1, 2, 3, 5, 7 per decade) when the data span a factor of 4 or more;
    otherwise linear, where a log axis would show a single tick. ``values``: judge by these
    (the means) rather than by everything drawn, whose CI bars may reach below zero."""
    if values is not None:
        shown = [v for v in values if v > 0 and math.isfinite(v)]
        low, high = (min(shown), max(shown)) if shown else (0.0, 0.0)
    else:
        low, high = ax.dataLim.intervaly
    if low > 0 and high / low >= 4:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0, 7.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())


def _x_words(results: SweepResults) -> str:
    x_name = x_of(results)
    return "write-protected pages" if x_name == PAGES else x_name


def _title(results: SweepResults, what: str) -> str:
    """The sweep's file name and description: what ran, not where it was written."""
    about = ": ".join(p for p in (results.name, results.description) if p)
    return f"{what} — {about}" if about else what


def latency_figure(results: SweepResults) -> Figure:
    """p50 and p99 trap latency (µs, mean ± 95% CI over replications) against pages."""
    fig, ax50, ax99, bottom = _panels(len(series(results)) + 1)
    handles = _draw_metric(ax50, results, "p50_ns", 1e3, "trap latency (µs)", "median (p50)")
    _draw_metric(ax99, results, "p99_ns", 1e3, "trap latency (µs)", "99th percentile (p99)")
    for ax in (ax50, ax99):
        _y_scale(ax)
    title = _title(results, f"Trap latency vs {_x_words(results)}")
    return _finish(fig, bottom, handles, title, results)


def visits_figure(results: SweepResults) -> Figure:
    """Mean rangeset nodes visited per trap, and the time those visits cost: a list node
    and a tree node cost what the cache model gives (sim.model.cache), so the panels can
    disagree on which structure is cheaper."""
    fig, ax_v, ax_t, bottom = _panels(len(series(results)) + 1)
    handles = _draw_metric(
        ax_v, results, "mean_visits", 1, "nodes visited per trap (mean)", "selection cost"
    )
    _draw_metric(
        ax_t,
        results,
        "mean_walk_ns",
        1,
        "ns walking rangeset nodes per trap (mean)",
        "what the visits cost (cache model)",
    )
    for ax in (ax_v, ax_t):
        _y_scale(ax)
    title = _title(results, f"Rangeset visits vs {_x_words(results)}")
    return _finish(fig, bottom, handles, title, results)


VGPU_PANELS = (
    ("p50_ns", 1e3, "trap latency (µs)", "median (p50)"),
    ("p99_ns", 1e3, "trap latency (µs)", "99th percentile (p99)"),
    ("dom0_util_mean", 0.01, "dom0 vCPU utilisation (%, mean)", "dom0's CPU use"),
)


def vgpus_figure(results: SweepResults) -> Figure:
    """Trap latency (p50, p99) and dom0's mean vCPU utilisation against the number of
    vGPUs: one row of panels per platform, one line per combination of the other axes.

    A point where no trap completed in the measured window (dom0 saturated) has no
    latency; it is marked with an x on the latency panels' top edge."""
    rows_by = (
        "platform"
        if "platform" in results.axes and "platform" not in x_axes(results, "vgpus")
        else None
    )
    facets = list(dict.fromkeys(r[rows_by] for r in results.aggregate)) if rows_by else [None]
    lines = series(results, "vgpus", skip={rows_by} if rows_by else None)
    # One dash style per value of the lines' first axis (the design), colours per line.
    firsts = list(dict.fromkeys(label.split(" · ")[0] for label in lines))
    legend_rows = -(-len(lines) // 2)
    band = 0.45 + 0.22 * legend_rows
    height = 3.6 * len(facets)
    fig = Figure(figsize=(14, height + band), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[height, band])
    axes = top.subplots(len(facets), len(VGPU_PANELS), squeeze=False)
    handles: list[tuple[Any, str]] = []
    for fi, facet in enumerate(facets):
        for pi, (metric, scale, ylabel, title) in enumerate(VGPU_PANELS):
            ax = axes[fi][pi]
            means: list[float] = []
            for li, (label, rows) in enumerate(lines.items()):
                mine = [r for r in rows if facet is None or r[rows_by] == facet]
                style = STYLES[firsts.index(label.split(" · ")[0]) % len(STYLES)]
                line, x, y = _line(ax, mine, "vgpus", metric, scale, li, style, small=True)
                means += y
                lost = [xi for xi, yi in zip(x, y, strict=True) if math.isnan(yi)]
                if lost and metric != "dom0_util_mean":
                    ax.plot(
                        lost,
                        [1.0] * len(lost),
                        ls="none",
                        marker="x",
                        ms=8,
                        color=f"C{li % 10}",
                        transform=ax.get_xaxis_transform(),
                        clip_on=False,
                    )
                if fi == 0 and pi == 0:
                    handles.append((line, label))
            xs = sorted({r["vgpus_mean"] for r in results.aggregate})
            ax.set_xticks(xs, [f"{v:g}" for v in xs])
            ax.set_xlabel("vGPUs (guests) on the host")
            ax.set_ylabel(ylabel)
            name = f"{facet.upper()}: " if facet else ""
            ax.set_title(f"{name}{title}", fontsize=10)
            ax.grid(True, alpha=0.3)
            if metric == "dom0_util_mean":
                ax.set_ylim(0, 105)
            else:
                _y_scale(ax, means)
    fig.suptitle(_title(results, "Trap latency and dom0 CPU use vs vGPUs"), fontsize=13)
    bottom.legend(
        [h for h, _ in handles],
        [label for _, label in handles],
        loc="upper center",
        ncols=2,
        fontsize=9,
        frameon=False,
    )
    bottom.text(
        0.5,
        0.02,
        "an x on the top edge: no trap completed in the measured window (dom0 saturated)",
        ha="center",
        va="bottom",
        fontsize=8,
        color="0.3",
    )
    return fig


def varies_in_vgpus(results: SweepResults) -> bool:
    """Do the sweep's points differ in their number of vGPUs?"""
    counts = {r["vgpus_mean"] for r in results.aggregate if not math.isnan(r["vgpus_mean"])}
    return len(counts) > 1


def write_figures(directory: str | Path) -> list[Path]:
    """Draw a sweep results directory's figures from its CSVs; return the files."""
    d = Path(directory)
    results = load_results(d)
    if not any(series(results).values()):
        return []  # every run failed: nothing to draw, the CSVs say why
    if varies_in_vgpus(results):
        return save_figure(vgpus_figure(results), d / VGPU_FIGURE_NAMES[0])
    paths = save_figure(latency_figure(results), d / FIGURE_NAMES[0])
    paths += save_figure(visits_figure(results), d / FIGURE_NAMES[1])
    return paths
