"""Smoke tests for ``vgpu-sim bench``: it must keep working. No timing is asserted here;
speed goals are benchmark figures in the README, never timed tests."""

from __future__ import annotations

import subprocess
import sys

from sim.bench import (
    BDW,
    GOALS,
    format_report,
    minimal_round_trip_s,
    model_s_per_access,
    peak_rss_mb,
    rangeset_lookup_s,
    with_ranges,
)
from sim.model.scenario import load_scenario


def test_with_ranges_builds_the_scaled_scenario() -> None:
    scenario = with_ranges(load_scenario(BDW), 8192, "rbtree")
    assert scenario.xen.rangeset == "rbtree"
    assert scenario.xen.max_nr_io_ranges is None
    assert scenario.guests[0].vgpu.ppgtt.live_pages == 8192
    assert scenario.guests[0].vgpu.ppgtt.contiguity == 0.0


def test_measurements_run_on_tiny_sizes() -> None:
    assert minimal_round_trip_s(200) > 0
    assert rangeset_lookup_s(64, "list", 200) > 0
    assert rangeset_lookup_s(64, "rbtree", 200) > 0
    small = with_ranges(load_scenario(BDW), 64, "list")
    assert model_s_per_access(small, 300) > 0


def test_peak_rss_child_runs() -> None:
    """The RSS figure comes from a child process running code from a string: run it."""
    assert peak_rss_mb(500) > 10


def test_report_names_every_goal() -> None:
    figures = {key: 1.0 for key, *_ in GOALS}
    for impl in ("list", "rbtree"):
        for n in (64, 8192):
            figures[f"{impl}_us_per_access_{n}"] = 1.0
            figures[f"{impl}_lookup_ns_{n}"] = 1.0
    figures.update(minimal_round_trip_us=1.0, model_us_per_access=2.0)
    report = format_report(figures)
    for _, _, _, label in GOALS:
        assert label in report


def test_python_dash_m_sim_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sim", "--help"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0
    for command in ("select", "validate", "run", "bench"):
        assert command in proc.stdout
