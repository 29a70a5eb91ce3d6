"""Smoke tests for ``vgpu-sim bench``: it must keep working. No timing is asserted here;
speed goals are benchmark figures in the README, never timed tests."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import sim.bench
from sim.bench import (
    BDW,
    GOALS,
    callgrind_total,
    format_report,
    instructions_per_trap,
    minimal_round_trip_s,
    model_s_per_access,
    peak_rss_mb,
    rangeset_lookup_s,
    run_bench,
    timed_rounds_in_children,
    with_ranges,
)
from sim.cli import main
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


def test_timed_rounds_run_in_children() -> None:
    """The model rate is timed in child processes from a string of code: run it."""
    rt, model = timed_rounds_in_children(2, 1, 300)
    assert rt > 0
    assert model > 0


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


# --- instructions per trap (callgrind) -------------------------------------------------

CALLGRIND_STDERR = """==4242== Callgrind, a call-graph generating cache profiler
==4242== For interactive control, run 'callgrind_control -h'.
==4242==
==4242== Events    : Ir
==4242== Collected : 1989341090
==4242==
==4242== I   refs:      1,989,341,090
"""


def test_callgrind_total_reads_the_collected_line(tmp_path: Path) -> None:
    assert callgrind_total(CALLGRIND_STDERR, tmp_path / "absent") == 1_989_341_090


def test_callgrind_total_falls_back_to_the_out_file(tmp_path: Path) -> None:
    out = tmp_path / "callgrind.out"
    for line in ("summary: 5377359131", "totals: 5377359131"):
        out.write_text(f"version: 1\ncmd: python\nevents: Ir\n{line}\n", encoding="utf-8")
        assert callgrind_total("==1== no totals here\n", out) == 5_377_359_131


def test_callgrind_total_without_a_total_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"no instruction total.*valgrind: bad option"):
        callgrind_total("valgrind: bad option\n", tmp_path / "absent")


class FakeCallgrind:
    """Stands in for ``subprocess.run``: a child of n traps "executes" start-up + cost x
    traps instructions, and reports ``traps(n)`` traps on stdout, as the real child does."""

    def __init__(self, startup: int, cost: int, traps: Any = lambda n: n) -> None:
        self.startup, self.cost, self.traps = startup, cost, traps
        self.argvs: list[list[str]] = []

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.argvs.append(argv)
        assert kwargs["env"]["PYTHONHASHSEED"] == "0"
        n = int(re.findall(r"(\d+)\)", argv[-1])[-1])
        traps = self.traps(n)
        out_file = Path(argv[2].removeprefix("--callgrind-out-file="))
        out_file.write_text(f"totals: {self.startup + self.cost * traps}\n", encoding="utf-8")
        stderr = f"==7== Events    : Ir\n==7== Collected : {self.startup + self.cost * traps}\n"
        return subprocess.CompletedProcess(argv, 0, f"{traps}\n", stderr)


@pytest.mark.parametrize("kind", ["model", "round_trip"])
def test_instructions_per_trap_is_the_difference_of_two_runs(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeCallgrind(startup=1_500_000_000, cost=98_765)
    monkeypatch.setattr(sim.bench.subprocess, "run", fake)
    assert instructions_per_trap(kind, 1_000, 3_000) == 98_765
    assert len(fake.argvs) == 2
    for argv in fake.argvs:
        assert argv[:2] == ["valgrind", "--tool=callgrind"]
        assert argv[3:5] == [sys.executable, "-c"]
        assert not Path(argv[2].removeprefix("--callgrind-out-file=")).exists()  # no debris
    assert {int(re.findall(r"(\d+)\)", a[-1])[-1]) for a in fake.argvs} == {1_000, 3_000}


def test_instructions_per_trap_divides_by_the_traps_the_children_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The model may stop a few traps past its limit: the children's own counts divide."""
    fake = FakeCallgrind(startup=10_000, cost=1_000, traps=lambda n: n + 1 if n > 100 else n)
    monkeypatch.setattr(sim.bench.subprocess, "run", fake)
    # (10,000 + 1,000 x 301) - (10,000 + 1,000 x 100) over 301 - 100 traps
    assert instructions_per_trap("model", 100, 300) == 1_000


def test_instructions_per_trap_reports_a_failed_child(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 1, "", "Traceback ...\nImportError: no sim\n")

    monkeypatch.setattr(sim.bench.subprocess, "run", failing)
    with pytest.raises(RuntimeError, match=r"exited 1: .*ImportError: no sim"):
        instructions_per_trap("round_trip", 10, 20)
    with pytest.raises(ValueError, match="unknown kind"):
        instructions_per_trap("heapq", 10, 20)
    with pytest.raises(ValueError, match="n_short < n_long"):
        instructions_per_trap("model", 20, 20)


@pytest.mark.parametrize("kind", ["model", "round_trip"])
def test_callgrind_child_code_runs_and_prints_its_traps(kind: str) -> None:
    """What the callgrind children run, run here without valgrind on a tiny size."""
    code = sim.bench.CALLGRIND_CHILDREN[kind].format(n=40)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.split()[-1] == "40"
    assert (
        "scipy"
        not in subprocess.run(  # the children import no sweep machinery
            [sys.executable, "-c", code + "import sys; print(sorted(sys.modules))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )


@pytest.fixture
def cheap_bench(monkeypatch: pytest.MonkeyPatch) -> None:
    """run_bench with the timed parts replaced by constants (they have tests of their own)."""
    monkeypatch.setattr(sim.bench, "timed_rounds_in_children", lambda c, r, n: (1e-5, 2e-5))
    monkeypatch.setattr(sim.bench, "model_s_per_access", lambda sc, n: 2e-5)
    monkeypatch.setattr(sim.bench, "rangeset_lookup_s", lambda n, impl: 3e-7)

    def no_callgrind(quick: bool) -> dict[str, Any]:
        raise AssertionError("callgrind must not run here")

    monkeypatch.setattr(sim.bench, "callgrind_figures", no_callgrind)


def test_no_callgrind_flag_skips_the_count(
    cheap_bench: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--no-rss", "--no-sweep", "--no-callgrind"]) == 0
    report = capsys.readouterr().out
    assert "instructions per trap: not counted (--no-callgrind)" in report
    assert "instructions per trap, bdw.yaml (callgrind)" not in report  # no goal line
    assert re.search(r"this bench took \d+ s", report)


def test_without_valgrind_the_report_says_so(
    cheap_bench: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sim.bench.shutil, "which", lambda name: None)
    figures = run_bench(quick=True, rss=False, sweep=False)
    assert figures["callgrind_skipped"] == "valgrind is not on PATH"
    assert "model_instructions_per_trap" not in figures
    lines = format_report(figures).splitlines()
    assert "instructions per trap: not counted (valgrind is not on PATH)" in lines


def test_a_failed_callgrind_keeps_the_other_figures(
    cheap_bench: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sim.bench.shutil, "which", lambda name: "/usr/bin/valgrind")

    def failed(quick: bool) -> dict[str, Any]:
        raise RuntimeError("callgrind child (model, 2000) exited 1: boom")

    monkeypatch.setattr(sim.bench, "callgrind_figures", failed)
    figures = run_bench(quick=True, rss=False, sweep=False)
    assert figures["model_rate_ratio"] == pytest.approx(0.5)
    assert figures["callgrind_skipped"].startswith("callgrind failed: callgrind child (model")


def test_callgrind_figures_reach_json_and_goals(
    cheap_bench: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sim.bench.shutil, "which", lambda name: "/usr/bin/valgrind")
    counted = {
        "model_instructions_per_trap": 115_000.0,
        "round_trip_instructions_per_trap": 69_000.0,
        "instruction_ratio": 0.6,
        "model_instructions_traps": [2_000, 6_000],
        "round_trip_instructions_traps": [4_000, 12_000],
    }
    monkeypatch.setattr(sim.bench, "callgrind_figures", lambda quick: counted)
    assert main(["bench", "--quick", "--no-rss", "--no-sweep", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert {k: figures[k] for k in counted} == counted
    assert figures["bench_wall_s"] >= 0
    report = format_report(figures)
    assert "model 115,000, round trip 69,000, ratio 0.600" in report
    assert "(runs of 2,000 and 6,000 model traps, 4,000 and 12,000 round trips in " in report
    goal = next(line for line in report.splitlines() if "bdw.yaml (callgrind)" in line)
    assert goal.endswith("MISSED")
