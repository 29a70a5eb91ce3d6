"""Faults and output locations (issue #9, items 12, 13, 15, 16, 22-25, 31).

Signals are sent to real child processes: SIGTERM must unwind like Ctrl-C, SIGKILL may
leave a temporary that the next run sweeps away (never a live run's), and a sweep's pool
workers must not outlive a killed parent.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

import sim.model.runner
import sim.study.executors
from sim.cli import main
from sim.results import process_alive, sweep_stale_temporaries

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "scenarios" / "small" / "tiny.yaml"
BDW = ROOT / "scenarios" / "bdw.yaml"
SWEEP: dict[str, Any] = {
    "schema_version": 1,
    "base": {
        "schema_version": 1,
        "platform": "hsw",
        "duration_ms": 4,
        "guests": [{"name": "vm1", "vgpu": {"ppgtt": {"live_pages": 8, "pages_per_ppgtt": 8}}}],
    },
    "axes": {"xen.rangeset": ["list", "rbtree"]},
    "replications": 2,
    "seed": 1,
}


def sweep_file(tmp_path: Path, **changes: Any) -> Path:
    path = tmp_path / "tiny-sweep.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, **changes}))
    return path


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def cli(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    """``python -m sim ARGS`` in a child process, in its own process group."""
    return subprocess.Popen(
        [sys.executable, "-m", "sim", *args],
        cwd=ROOT,
        text=True,
        start_new_session=True,
        **kwargs,
    )


def wait_for(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# -- output locations (items 12, 13, 25) -----------------------------------------------------
def test_a_bad_scheduler_is_refused_before_the_output_is_claimed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 12: a ValueError after sweep.json was written, before."""
    pytest.importorskip("distributed")
    path, out = sweep_file(tmp_path), tmp_path / "out"
    assert main(["sweep", str(path), "--scheduler", "not an address", "--out", str(out)]) == 2
    assert "--scheduler: 'not an address': cannot connect" in one_line(capsys.readouterr().err)
    assert not out.exists()

    # An unreachable scheduler (dask's own 20 s timeout, cut short here).
    import distributed

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise OSError("Timed out trying to connect")

    monkeypatch.setattr(distributed, "Client", unreachable)
    assert main(["sweep", str(path), "--scheduler", "tcp://127.0.0.1:1", "--out", str(out)]) == 2
    assert "cannot connect: Timed out" in one_line(capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.parametrize("command", ["run", "run-results", "sweep"])
def test_an_output_under_a_file_is_bad_input(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 13: raw FileExistsError / NotADirectoryError tracebacks before."""
    blocker = tmp_path / "afile"
    blocker.write_text("")
    argv = {
        "run": ["run", str(TINY), "--out", str(blocker / "x")],
        "run-results": ["run", str(TINY), "--results", str(blocker)],
        "sweep": ["sweep", str(sweep_file(tmp_path)), "--out", str(blocker / "x"), "--jobs", "1"],
    }[command]
    assert main([*argv, "--no-progress"]) == 2
    assert f"cannot be created: {blocker} is not a directory" in one_line(capsys.readouterr().err)


def test_a_read_only_output_is_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As root a read-only directory is writable, so os.access answers for the kernel."""
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert main(["run", str(TINY), "--out", str(tmp_path / "ro" / "x")]) == 2
    assert f"{tmp_path} is not writable" in one_line(capsys.readouterr().err)


def test_a_full_disk_is_one_line_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(path: Path, text: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(sim.model.runner, "write_text_atomic", full)
    out = tmp_path / "results" / "tiny" / "run"
    assert main(["run", str(TINY), "--out", str(out), "--no-progress"]) == 2
    line = one_line(capsys.readouterr().err.split("expected\n", 1)[1])
    assert line == f"vgpu-sim: error: {out}: cannot write the results: No space left on device"
    assert list(tmp_path.iterdir()) == []  # item 25: not even results/tiny/


# -- Unix behaviour (items 15, 16) -------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["select", *sorted(str(p) for p in (ROOT / "scenarios" / "selection").glob("*.yaml"))],
        ["run", str(TINY), "--out", "OUT", "--no-progress"],
    ],
    ids=["select", "run"],
)
def test_output_piped_into_head_ends_quietly(args: list[str], tmp_path: Path) -> None:
    """Item 15: a BrokenPipeError traceback and exit 1 ("a check failed") before."""
    args = [str(tmp_path / "o") if a == "OUT" else a for a in args]
    proc = cli(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stderr is not None
    # What `| head -1` does after its line; closed at once, so that the command's very
    # first write meets the closed pipe (a later close races with the pipe's buffer).
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err
    assert "Exception ignored" not in err


def test_an_ascii_stdout_gets_ascii_stand_ins(tmp_path: Path) -> None:
    """Item 16: `sweep` crashed on "±" after finishing."""
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    path = sweep_file(tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sim",
            "sweep",
            str(path),
            "--jobs",
            "1",
            "--no-plot",
            "--no-progress",
            "--out",
            str(tmp_path / "o"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert b"+/-" in proc.stdout
    assert max(proc.stdout) < 128


# -- signals and leftovers (items 22-24) ----------------------------------------------------
def _temporaries(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.endswith(".tmp")] if directory.exists() else []


def test_sigterm_of_a_traced_run_leaves_nothing(tmp_path: Path) -> None:
    """Item 22: SIGTERM is handled like Ctrl-C; the partial trace goes."""
    results = tmp_path / "results"
    proc = cli(
        "run", str(BDW), "--set", "duration_ms=60000", "--trace", "--results", str(results),
        "--no-progress", "--max-events", str(10**9),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    wait_for(lambda: bool(_temporaries(results / "bdw")))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert proc.stderr is not None
    assert "terminated" in proc.stderr.read()
    assert not results.exists()  # neither the temporary nor results/bdw/


def test_sigkill_leftovers_are_swept_by_the_next_run_but_a_live_runs_are_not(
    tmp_path: Path,
) -> None:
    """Item 22: SIGKILL cannot be handled; the next run in that directory cleans up."""
    results = tmp_path / "results"
    proc = cli(
        "run", str(TINY), "--set", "duration_ms=600000", "--set", "name=bdw", "--trace",
        "--results", str(results), "--no-progress", "--max-events", str(10**9),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for(lambda: bool(_temporaries(results / "bdw")))
    stale = _temporaries(results / "bdw")[0]
    # A live run's temporary beside it: the name of a process that is still running.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    live = results / "bdw" / stale.name.replace(f".{proc.pid}@", f".{sleeper.pid}@")
    live.mkdir()
    proc.kill()
    proc.wait(timeout=60)
    assert not process_alive(proc.pid)
    try:
        argv = ["run", str(TINY), "--set", "name=bdw", "--results", str(results)]
        assert main([*argv, "--no-progress"]) == 0
        assert not stale.exists()
        assert live.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert sweep_stale_temporaries(results / "bdw") == [live]
    # Nothing that does not look like one of our temporaries is ever touched.
    (results / "bdw" / ".notes.1.tmp").write_text("mine")
    assert sweep_stale_temporaries(results / "bdw") == []


WORKER_SCRIPT = """
import os, sys, time
import sim.study.executors as ex
from sim.cli import main

def slow(config, seed, base_dir, max_events=0):
    open(os.path.join({marks!r}, f"worker-{{os.getpid()}}"), "w").close()
    time.sleep(120)
    return {{}}

ex.run_point = slow
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_pool_workers_exit_when_the_sweep_dies(sig: int, tmp_path: Path) -> None:
    """Item 23: orphaned workers blocked on a pipe forever before. Item 24 for SIGTERM."""
    marks = tmp_path / "marks"
    marks.mkdir()
    script = tmp_path / "sweep_child.py"
    script.write_text(WORKER_SCRIPT.format(marks=str(marks)))
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(script),
            "sweep",
            str(sweep_file(tmp_path)),
            "--jobs",
            "2",
            "--out",
            str(out),
            "--no-progress",
            "--no-plot",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    workers: list[int] = []
    try:
        wait_for(lambda: len(list(marks.iterdir())) == 2)
        workers = [int(p.name.split("-")[1]) for p in marks.iterdir()]
        proc.send_signal(sig)
        status = proc.wait(timeout=60)
        wait_for(lambda: not any(process_alive(pid) for pid in workers), timeout=15)
    finally:  # never leave a process behind, whatever the outcome
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in workers:
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
    if sig == signal.SIGTERM:
        assert status == 143
        assert json.loads((out / "sweep.json").read_text())["status"] == "interrupted"
        assert proc.stderr is not None
        assert "Traceback" not in proc.stderr.read()
    assert _temporaries(out) == []


# -- the sweep summary (item 31) ------------------------------------------------------------
@pytest.mark.slow
def test_with_a_scheduler_the_summary_names_it_not_jobs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        argv = ["sweep", str(sweep_file(tmp_path)), "--scheduler", cluster.scheduler_address]
        assert main([*argv, "--out", str(tmp_path / "o"), "--no-plot", "--no-progress"]) == 0
    summary = capsys.readouterr().out.splitlines()[0]
    assert f"dask scheduler {cluster.scheduler_address})" in summary
    assert "jobs" not in summary
