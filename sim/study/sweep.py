"""Running a sweep: every unfinished (point, replication) into a result store, then CSVs.

:func:`run_sweep` ties the parts together: the expanded sweep
(:mod:`sim.study.sweepfile`), an executor (:mod:`sim.study.executors`), the result store
with resume (:mod:`sim.study.store`), progress, the CSVs (:mod:`sim.study.tables`) and,
at the end, the figures (:mod:`sim.study.plot`, which reads the CSVs back).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from sim.model.budget import DEFAULT_MAX_EVENTS
from sim.results import dump_json, sweep_stale_temporaries, write_text_atomic
from sim.study.executors import make_executor
from sim.study.progress import Progress
from sim.study.store import claim_directory, finished_outcome, sweep_manifest
from sim.study.sweepfile import Sweep
from sim.study.tables import aggregate_table, csv_text, points_table


@dataclass
class SweepOutcome:
    out_dir: Path
    tasks: int
    reused: int
    ran: int
    failed: int
    wall_s: float
    files: list[Path] = field(default_factory=list)


def run_sweep(
    sweep: Sweep,
    out_dir: str | Path,
    *,
    jobs: int = 1,
    backend: str = "process",
    scheduler: str | None = None,
    progress: str | None = None,
    plot: bool = True,
    argv: list[str] | None = None,
    log: TextIO | None = None,
    max_events: int = DEFAULT_MAX_EVENTS,
) -> SweepOutcome:
    """Run every unfinished (point, replication) of ``sweep`` into ``out_dir``.

    ``progress``: "bar", "lines", "none", or None for a bar on a terminal and lines
    otherwise. Returns counts; ``failed`` > 0 means some runs recorded an error. On
    KeyboardInterrupt (or SIGTERM, which the CLI turns into one) the finished runs stay
    on disk, ``sweep.json`` says "interrupted" and no CSV is written. ``max_events`` caps
    each run (:func:`sim.model.budget.run_until`).
    """
    log = log if log is not None else sys.stderr
    out = Path(out_dir)
    execute = make_executor(backend, jobs, scheduler)
    try:
        return _run(sweep, out, execute, progress, plot, argv, log, max_events)
    finally:
        execute.close()


def _run(
    sweep: Sweep,
    out: Path,
    execute: Any,
    progress: str | None,
    plot: bool,
    argv: list[str] | None,
    log: TextIO,
    max_events: int,
) -> SweepOutcome:
    claim_directory(out, sweep)
    for directory in (out, out / "points"):
        sweep_stale_temporaries(directory)
    started_utc = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    write_text_atomic(
        out / "sweep.json", dump_json(sweep_manifest(sweep, "running", argv, started_utc, None))
    )
    print(f"{sweep.name}: {sweep.size(max_events)}", file=log)

    tasks = sweep.tasks()
    points_dir = out / "points"
    outcomes: dict[int, dict[str, Any]] = {}
    for i, task in enumerate(tasks):
        saved = finished_outcome(points_dir / task.file_name, task)
        if saved is not None:
            outcomes[i] = saved
    reused = len(outcomes)
    todo = [
        (i, (t.point.config, t.seed, str(sweep.base_dir), max_events))
        for i, t in enumerate(tasks)
        if i not in outcomes
    ]
    # Start the executor before the progress bar: a process pool may fork its workers
    # now, and must do so before tqdm starts its monitor thread.
    stream = execute(todo) if todo else iter(())
    if progress is None:
        progress = "bar" if log.isatty() else "lines"
    bar = Progress(sweep.name, len(tasks), reused, progress, log)
    failed = 0
    try:
        for i, outcome in stream:
            task = tasks[i]
            saved = {
                "point_id": task.point.point_id,
                "replication": task.replication,
                "seed": task.seed,
                "axes": task.point.labels,
                "scenario_sha256": task.point.scenario_sha256,
                **outcome,
            }
            write_text_atomic(points_dir / task.file_name, dump_json(saved))
            outcomes[i] = saved
            failed += bool(outcome["error"])
            bar.update(task, outcome)
    except BaseException as exc:
        bar.close()
        manifest = sweep_manifest(sweep, "interrupted", argv, started_utc, time.perf_counter() - t0)
        manifest["runs"] = {"total": len(tasks), "reused": reused, "finished": len(outcomes)}
        with contextlib.suppress(Exception):  # the disk may be what failed
            write_text_atomic(out / "sweep.json", dump_json(manifest))
        if isinstance(exc, KeyboardInterrupt):
            print(
                f"{sweep.name}: interrupted; {len(outcomes)} of {len(tasks)} runs are kept in "
                f"{points_dir}; run the same sweep again to finish it",
                file=log,
            )
        raise
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    bar.close()
    if len(outcomes) != len(tasks):  # an executor lost a task: never write partial CSVs
        raise RuntimeError(f"{len(tasks) - len(outcomes)} runs returned no outcome")

    axes = [a.name for a in sweep.axes]
    files = [out / "points.csv", out / "aggregate.csv"]
    write_text_atomic(files[0], csv_text(*points_table(axes, tasks, outcomes)))
    write_text_atomic(files[1], csv_text(*aggregate_table(axes, tasks, outcomes)))
    wall_s = time.perf_counter() - t0
    status = "failed" if failed else "complete"
    manifest = sweep_manifest(sweep, status, argv, started_utc, wall_s)
    manifest["runs"] = {"total": len(tasks), "reused": reused, "ran": len(todo), "failed": failed}
    write_text_atomic(out / "sweep.json", dump_json(manifest))
    if plot:
        from sim.study.plot import write_figures

        files += write_figures(out)
    return SweepOutcome(out, len(tasks), reused, len(todo), failed, wall_s, files)
