"""Sweeps: expansion, point ids and seeds, validation, backends, resuming, failures."""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

import sim.model.runner
import sim.study.executors
import sim.study.sweep
from sim.cli import main
from sim.inputs import InputError
from sim.model.runner import POINT_COLUMNS
from sim.study.stats import mean_ci95
from sim.study.sweep import run_sweep
from sim.study.sweepfile import derive_seed, load_sweep
from sim.study.tables import load_results

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "scenarios" / "sweeps").glob("*.yaml"))
FIGURES = (
    "latency_vs_ranges.png",
    "latency_vs_ranges.svg",
    "visits_vs_ranges.png",
    "visits_vs_ranges.svg",
)

# A few milliseconds of simulated time per run: the tests check plumbing, not numbers.
BASE: dict[str, Any] = {
    "schema_version": 1,
    "platform": "hsw",
    "duration_ms": 8,
    "warmup_ms": 1,
    "guests": [{"name": "vm1", "vcpus": 1, "vgpu": {"ppgtt": {"pages_per_ppgtt": 16}}}],
}
VARIANTS = [
    {"label": "list", "xen.rangeset": "list", "xen.max_nr_io_ranges": None},
    {"label": "p2m", "xen.design": "p2m-ioreq-server"},
]


def sweep_data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "schema_version": 1,
        "description": "test sweep",
        "base": BASE,
        "set": {"xen.max_nr_io_ranges": 48},
        "axes": {
            "variant": VARIANTS,
            "guests[0].vgpu.ppgtt.live_pages": [16, 64],
        },
        "replications": 2,
        "seed": 7,
    }
    data.update(changes)
    return data


def write_sweep(tmp_path: Path, data: dict[str, Any], name: str = "tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_sweep(tmp_path, sweep_data())


def run_quiet(sweep_file: Path, out: Path, **kwargs: Any) -> sim.study.sweep.SweepOutcome:
    kwargs.setdefault("progress", "none")
    kwargs.setdefault("plot", False)
    return run_sweep(load_sweep(sweep_file), out, **kwargs)


# -- expansion, ids, seeds ------------------------------------------------------------------
def test_expansion_is_the_cartesian_product_first_axis_slowest(tiny: Path) -> None:
    sweep = load_sweep(tiny)
    assert [a.name for a in sweep.axes] == ["variant", "guests[0].vgpu.ppgtt.live_pages"]
    assert [a.compound for a in sweep.axes] == [True, False]
    labels = [tuple(p.labels.values()) for p in sweep.points]
    assert labels == [("list", "16"), ("list", "64"), ("p2m", "16"), ("p2m", "64")]
    first, last = sweep.points[0].config, sweep.points[-1].config
    assert first["xen"] == {**first["xen"], "design": "xen-4.6", "max_nr_io_ranges": None}
    assert first["guests"][0]["vgpu"]["ppgtt"]["live_pages"] == 16
    # The fixed override applies where the variant does not set the key.
    assert last["xen"]["design"] == "p2m-ioreq-server"
    assert last["xen"]["max_nr_io_ranges"] == 48
    assert last["guests"][0]["vgpu"]["ppgtt"]["live_pages"] == 64
    # The preset still fills what the sweep leaves out.
    assert last["guests"][0]["vgpu"]["ppgtt"]["max_pages_per_ppgtt"] == 513
    tasks = sweep.tasks()
    assert [(t.point.index, t.replication) for t in tasks] == [
        (i, r) for i in range(4) for r in range(2)
    ]


def test_point_ids_and_seeds_do_not_depend_on_other_values_or_order(tmp_path: Path) -> None:
    base = load_sweep(write_sweep(tmp_path, sweep_data(), "a.yaml"))
    more = sweep_data()
    more["axes"] = {"variant": VARIANTS, "guests[0].vgpu.ppgtt.live_pages": [8, 64, 16, 32]}
    extended = load_sweep(write_sweep(tmp_path, more, "b.yaml"))
    seeds_a = {(t.point.point_id, t.replication): t.seed for t in base.tasks()}
    seeds_b = {(t.point.point_id, t.replication): t.seed for t in extended.tasks()}
    assert len(seeds_b) == 16
    for key, seed in seeds_a.items():
        assert seeds_b[key] == seed  # same point, same replication: same seed
    assert len(set(seeds_b.values())) == len(seeds_b)  # all runs differ
    assert base.sha256 != extended.sha256
    assert derive_seed(7, "abcdef012345", 0) != derive_seed(8, "abcdef012345", 0)


def test_shipped_sweeps_validate() -> None:
    assert {p.name for p in SHIPPED} >= {"range-count.yaml", "patch-series.yaml"}
    for path in SHIPPED:
        sweep = load_sweep(path)
        assert len(sweep.points) >= 2
        assert sweep.spec.replications >= 2


def test_patch_series_uses_the_presets_page_counts() -> None:
    sweep = load_sweep(ROOT / "scenarios" / "sweeps" / "patch-series.yaml")
    pages = {p.labels["platform"]: p.config["guests"][0]["vgpu"]["ppgtt"] for p in sweep.points}
    assert pages["hsw"]["live_pages"] == 300
    assert pages["bdw"]["live_pages"] == 3000


# -- bad sweep files ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "keypath", "problem"),
    [
        ({"colour": "red"}, "colour", "unknown key"),
        ({"replications": 0}, "replications", "greater than or equal to 1"),
        ({"axes": {}}, "axes", "at least 1"),
        ({"axes": {"xen.rangeset": []}}, "axes.xen.rangeset", "empty axis"),
        ({"axes": {"xen.colour": ["red"]}}, "axes.xen.colour", "no such key"),
        ({"axes": {"guests[3].vcpus": [1]}}, "axes.guests[3].vcpus", "no such key"),
        ({"axes": {"variant": [{"x": 1}]}}, "axes.variant", "give every value a label"),
        (
            {"axes": {"variant": [{"label": "a", "xen.nope": 1}]}},
            "axes.variant[0].xen.nope",
            "no such key",
        ),
        ({"axes": {"variant": [{"label": "a"}]}}, "axes.variant[0]", "no key path"),
        ({"axes": {"xen.rangeset": ["list", "list"]}}, "axes.xen.rangeset[1]", "duplicate"),
        ({"axes": {"seed": [1, 2]}}, "axes.seed", "replications"),
        ({"set": {"xen.colour": 1}}, "set.xen.colour", "no such key"),
        ({"base": "missing.yaml"}, "base", "not found"),
        (
            {"axes": {"guests[0].vgpu.ppgtt.live_pages": [16, -1]}},
            "point {guests[0].vgpu.ppgtt.live_pages=-1}: guests[0].vgpu.ppgtt.live_pages",
            "greater than or equal to 0",
        ),
        (
            {"axes": {"xen.rangeset": ["list", "skiplist"]}},
            "point {xen.rangeset=skiplist}: xen.rangeset",
            "'list' or 'rbtree'",
        ),
    ],
)
def test_bad_sweep_files_name_file_keypath_and_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict, keypath: str, problem: str
) -> None:
    path = write_sweep(tmp_path, sweep_data(**change))
    with pytest.raises(InputError) as info:
        load_sweep(path)
    err = info.value
    assert err.file == str(path)
    assert err.keypath == keypath
    assert problem in err.problem
    # The command line: exit 2, one line naming file and key path, no traceback.
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--jobs", "1"]) == 2
    stderr = capsys.readouterr().err
    assert f"{path}: {keypath}" in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "out").exists()  # validated before anything ran


def test_invalid_base_file_names_the_base(tmp_path: Path) -> None:
    bad = {**BASE, "duration_ms": -1}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(bad), encoding="utf-8")
    path = write_sweep(tmp_path, sweep_data(base="base.yaml"))
    with pytest.raises(InputError) as info:
        load_sweep(path)
    assert info.value.file == str((tmp_path / "base.yaml").resolve())
    assert info.value.keypath == "duration_ms"


def test_a_base_path_is_relative_to_the_sweep_file(tmp_path: Path) -> None:
    (tmp_path / "scen").mkdir()
    (tmp_path / "scen" / "base.yaml").write_text(yaml.safe_dump(BASE), encoding="utf-8")
    (tmp_path / "sweeps").mkdir()
    sweep = load_sweep(write_sweep(tmp_path / "sweeps", sweep_data(base="../scen/base.yaml")))
    assert sweep.base_dir == (tmp_path / "scen").resolve()
    assert sweep.points[0].config["name"] == "base"


# -- determinism across jobs and backends --------------------------------------------------
def test_jobs_1_and_jobs_2_give_identical_csvs(tiny: Path, tmp_path: Path) -> None:
    one = run_quiet(tiny, tmp_path / "one", jobs=1)
    two = run_quiet(tiny, tmp_path / "two", jobs=2)
    assert (one.ran, two.ran, one.failed, two.failed) == (8, 8, 0, 0)
    for name in ("points.csv", "aggregate.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    header = (tmp_path / "one" / "points.csv").read_text().splitlines()[0].split(",")
    assert header == [
        "variant",
        "guests[0].vgpu.ppgtt.live_pages",
        "replication",
        "point_id",
        "seed",
        *POINT_COLUMNS,
        "error",
    ]


@pytest.mark.slow
def test_dask_local_cluster_gives_the_same_csvs(tiny: Path, tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    run_quiet(tiny, tmp_path / "process", jobs=2)
    outcome = run_quiet(tiny, tmp_path / "dask", jobs=2, backend="dask")
    assert (outcome.ran, outcome.failed) == (8, 0)
    for name in ("points.csv", "aggregate.csv"):
        assert (tmp_path / "process" / name).read_bytes() == (tmp_path / "dask" / name).read_bytes()


def test_missing_dask_says_how_to_install_it(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # makes `import distributed` fail
    assert main(["sweep", str(tiny), "--backend", "dask", "--out", str(tmp_path / "o")]) == 2
    stderr = capsys.readouterr().err
    assert "pip install 'vgpu-sim[dask]'" in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "o").exists()


def test_scheduler_needs_the_dask_backend(tiny: Path, tmp_path: Path) -> None:
    args = ["sweep", str(tiny), "--backend", "process", "--scheduler", "tcp://127.0.0.1:1"]
    assert main([*args, "--out", str(tmp_path / "o")]) == 2


# -- resuming, failures, interrupts ---------------------------------------------------------
class CountingRunPoint:
    """Stands in for run_point in the serial (in-process) path: counts and can fail."""

    def __init__(self, fail_pages: int | None = None, interrupt_after: int | None = None) -> None:
        self.calls: list[tuple[int, int]] = []
        self.fail_pages = fail_pages
        self.interrupt_after = interrupt_after

    def __call__(
        self, config: dict[str, Any], seed: int, base_dir: str, max_events: int = 10**9
    ) -> dict[str, Any]:
        pages = config["guests"][0]["vgpu"]["ppgtt"]["live_pages"]
        if self.interrupt_after is not None and len(self.calls) == self.interrupt_after:
            raise KeyboardInterrupt
        self.calls.append((pages, seed))
        if pages == self.fail_pages and config["xen"]["design"] == "p2m-ioreq-server":
            raise RuntimeError("injected failure")
        return sim.model.runner.run_point(config, seed, base_dir, max_events)


def test_rerun_skips_finished_points_and_redoes_a_deleted_one(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    run_quiet(tiny, out, jobs=2)
    first = {n: (out / n).read_bytes() for n in ("points.csv", "aggregate.csv")}
    victim = sorted((out / "points").glob("*.json"))[3]
    saved = json.loads(victim.read_text())
    victim.unlink()

    counter = CountingRunPoint()
    monkeypatch.setattr(sim.study.executors, "run_point", counter)
    outcome = run_quiet(tiny, out, jobs=1)
    assert (outcome.reused, outcome.ran) == (7, 1)
    assert [seed for _, seed in counter.calls] == [saved["seed"]]
    assert json.loads(victim.read_text())["record"] == saved["record"]
    for name, data in first.items():
        assert (out / name).read_bytes() == data

    # A third run has nothing left to do.
    assert run_quiet(tiny, out, jobs=1).ran == 0
    assert len(counter.calls) == 1


def test_a_failing_point_is_recorded_the_rest_finish_and_exit_is_1(
    tiny: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    monkeypatch.setattr(sim.study.executors, "run_point", CountingRunPoint(fail_pages=64))
    argv = ["sweep", str(tiny), "--jobs", "1", "--out", str(out), "--no-plot"]
    assert main(argv) == 1
    assert "2 runs failed" in capsys.readouterr().err
    results = load_results(out)
    failed = [r for r in results.points if r["error"]]
    assert len(failed) == 2  # p2m at 64 pages, both replications
    assert all(r["variant"] == "p2m" and "injected failure" in r["error"] for r in failed)
    assert all(math.isnan(r["p50_ns"]) for r in failed)
    assert sum(1 for r in results.points if not r["error"]) == 6
    bad = next(r for r in results.aggregate if r["variant"] == "p2m" and r["n"] == 0)
    assert bad["failed"] == 2
    saved = [json.loads(p.read_text()) for p in (out / "points").glob("*.json")]
    errors = [s for s in saved if s["error"]]
    assert len(errors) == 2
    assert "RuntimeError: injected failure" in errors[0]["error"]
    assert "Traceback" in errors[0]["traceback"]
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["status"] == "failed"
    assert manifest["runs"] == {"total": 8, "reused": 0, "ran": 8, "failed": 2}

    # Once the cause is gone, a re-run retries only the failed runs and succeeds.
    counter = CountingRunPoint()
    monkeypatch.setattr(sim.study.executors, "run_point", counter)
    assert main(argv) == 0
    assert len(counter.calls) == 2
    assert not any(r["error"] for r in load_results(out).points)


def test_interrupt_keeps_finished_points_and_writes_no_csv(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    monkeypatch.setattr(sim.study.executors, "run_point", CountingRunPoint(interrupt_after=3))
    with pytest.raises(KeyboardInterrupt):
        run_quiet(tiny, out, jobs=1)
    assert len(list((out / "points").glob("*.json"))) == 3
    assert not (out / "points.csv").exists()
    assert not (out / "aggregate.csv").exists()
    leftovers = [p.name for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    # Issue #9 item 24: the manifest says so, rather than "running" forever.
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["status"] == "interrupted"
    assert manifest["runs"] == {"total": 8, "reused": 0, "finished": 3}

    monkeypatch.setattr(sim.study.executors, "run_point", CountingRunPoint(interrupt_after=0))
    assert main(["sweep", str(tiny), "--jobs", "1", "--out", str(out), "--no-plot"]) == 130

    counter = CountingRunPoint()
    monkeypatch.setattr(sim.study.executors, "run_point", counter)
    outcome = run_quiet(tiny, out, jobs=1)
    assert (outcome.reused, outcome.ran, len(counter.calls)) == (3, 5, 5)
    assert (out / "points.csv").exists()


def _slow_marked_run(
    config: dict[str, Any], seed: int, base_dir: str, max_events: int = 0
) -> dict[str, Any]:
    """Stands in for run_point in forked workers: leaves a marker, takes a while."""
    (Path(base_dir) / f"ran-{seed}").touch()
    time.sleep(0.3)
    return {}


@pytest.mark.slow
# A crash of the pool's manager thread (CPython 3.11 on futures we had cancelled) would
# print a thread's traceback at the user's Ctrl-C: make it fail the test.
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_stopping_the_process_pool_runs_no_more_queued_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What Ctrl-C does to the pool: queued tasks are cancelled, not run to the end."""
    # Forked workers inherit the stand-in; the point is the parent's cancelling.
    monkeypatch.setattr(sim.study.executors, "run_point", _slow_marked_run)
    monkeypatch.setattr(sim.study.executors, "process_start_method", lambda: "fork")
    items = [(i, ({}, i, str(tmp_path), 1000)) for i in range(30)]
    outcomes = sim.study.executors._run_process_pool(items, jobs=2)
    next(outcomes)
    outcomes.close()  # what an interrupt in the consuming loop does
    time.sleep(2.5)  # long enough for ~16 more tasks if the pool kept going
    ran = len(list(tmp_path.glob("ran-*")))
    # 1 finished + 2 running + at most 3 in the pool's call queue; not all 30.
    assert ran <= 7


def test_a_directory_of_another_sweep_is_refused(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_quiet(tiny, out, jobs=1)
    other = write_sweep(tmp_path, sweep_data(seed=8), "other.yaml")
    with pytest.raises(InputError, match="different sweep"):
        run_quiet(other, out, jobs=1)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    assert main(["sweep", str(tiny), "--jobs", "1", "--out", str(tmp_path / "full")]) == 2


# -- outputs --------------------------------------------------------------------------------
def test_manifest_aggregate_and_figures(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["sweep", str(tiny), "--jobs", "2", "--out", str(out), "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert "4 points x 2 replications: 8 run, 0 reused, 0 failed" in stdout
    for name in FIGURES:
        assert (out / name).stat().st_size > 1000
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["master_seed"] == 7
    assert manifest["sweep_sha256"] == load_sweep(tiny).sha256
    assert manifest["sweep"]["set"] == {"xen.max_nr_io_ranges": 48}
    assert {"versions", "git_describe", "argv", "wall_s", "points"} <= manifest.keys()

    results = load_results(out)
    assert results.axes == ("variant", "guests[0].vgpu.ppgtt.live_pages")
    assert len(results.aggregate) == 4
    for row in results.aggregate:
        reps = [p["p50_ns"] for p in results.points if p["point_id"] == row["point_id"]]
        mean, half = mean_ci95(reps)
        assert row["n"] == 2
        assert row["p50_ns_mean"] == pytest.approx(mean, rel=1e-8)
        # points.csv keeps 10 significant digits (±5e-10 of the mean per value); the CI,
        # t(0.975, 1) = 12.7 times a difference of two such values over sqrt(2), is good
        # to about 1e-8 of the mean when recomputed from them.
        assert row["p50_ns_ci95"] == pytest.approx(half, rel=1e-8, abs=abs(mean) * 1e-8)
    p2m = [r for r in results.aggregate if r["variant"] == "p2m"]
    assert all(r["ranges_mean"] == 3 for r in p2m)  # pages are in no rangeset

    # `vgpu-sim plot` redraws the four figures from the CSVs alone.
    for name in FIGURES:
        (out / name).unlink()
    (out / "sweep.json").unlink()
    assert main(["plot", str(out)]) == 0
    assert all((out / name).is_file() for name in FIGURES)


def test_plot_of_a_directory_without_csvs_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plot", str(tmp_path)]) == 2
    assert "points.csv" in capsys.readouterr().err


def test_confidence_intervals_use_students_t() -> None:
    """Half-width = t(0.975, n-1) * s / sqrt(n), with t from tables (SciPy computes it)."""
    known = {1: 12.706204736, 2: 4.302652730, 4: 2.776445105, 9: 2.262157163, 30: 2.042272456}
    for df, t in known.items():
        values = [float(i * i % 7) for i in range(df + 1)]
        mean, half = mean_ci95(values)
        sd = statistics.stdev(values)
        assert mean == pytest.approx(statistics.fmean(values))
        assert half == pytest.approx(t * sd / math.sqrt(df + 1), rel=1e-8)
    mean, half = mean_ci95([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.302652730 / math.sqrt(3))
    assert math.isnan(mean_ci95([5.0])[1])
    assert all(math.isnan(v) for v in mean_ci95([]))


def test_a_sweep_over_guest_counts_draws_latency_and_dom0_use_against_vgpus(
    tmp_path: Path,
) -> None:
    """``guests[0].count`` as an axis: points differ in vGPUs, so the sweep draws the
    many-vGPU figure (and not the page-count ones, whose x would mix in the count)."""
    data = sweep_data(
        set={"host.dom0_vcpus": 1},
        axes={"variant": VARIANTS, "guests[0].count": [1, 3]},
        replications=1,
    )
    out = tmp_path / "out"
    outcome = run_quiet(write_sweep(tmp_path, data), out, plot=True)
    assert outcome.failed == 0
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["latency_vs_vgpus.png"]
    results = load_results(out)
    by_count = {r["guests[0].count"]: r for r in results.aggregate if r["variant"] == "list"}
    assert by_count["1"]["vgpus_mean"] == 1
    assert by_count["3"]["vgpus_mean"] == 3
    # Three guests' device models on one dom0 vCPU keep it busier than one guest's.
    assert by_count["3"]["dom0_util_mean_mean"] > by_count["1"]["dom0_util_mean_mean"] > 0
    assert by_count["3"]["wp_pages_mean"] == 3 * by_count["1"]["wp_pages_mean"]
