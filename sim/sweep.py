"""Parameter sweeps: a base scenario, axes of values, replications, one seed.

A sweep file (``scenarios/sweeps/*.yaml``) names a base scenario, fixed overrides
(``set:``) and ordered ``axes:``. Each axis is either a key path with a list of values
(``xen.rangeset: [list, rbtree]``) or a named *compound* axis whose values are mappings
with a ``label`` and several key paths, for steps that are specific combinations rather
than a cartesian product::

    variant:
      - {label: "list", xen.rangeset: list}
      - {label: "p2m", xen.design: p2m-ioreq-server}

A value that is a mapping with a ``label`` key makes its axis compound. The sweep's
points are the cartesian product of the axes, first axis slowest.

Everything is validated before anything runs: the sweep file's own keys, every key path
(which must exist in the base scenario's *effective* configuration, defaults included),
and every expanded point as a full scenario. Problems are :class:`InputError` naming the
file, the key path (or the point's axis values) and the problem.

Seeds: each point has a stable id, the first 12 hex digits of the SHA-256 of the
canonical JSON of its axis values, so adding a value to an axis changes no other
point's id. Each (point, replication) is seeded with
``SeedSequence(entropy=seed, spawn_key=(int(id[:8], 16), replication))``; results are
therefore the same whatever the number of jobs, the backend or the completion order.
The base scenario's own ``seed`` is not used.

Execution ships plain data only: ``sim.runner.run_point(config, seed, base_dir)`` on a
process pool, serially in-process (``jobs=1``), or on dask.distributed (optional extra
``vgpu-sim[dask]``, imported only when chosen). Each finished (point, replication) is
written at once, atomically, to ``points/<id>-r<replication>.json``; a re-run into the
same directory skips those that succeeded and retries those that failed. The CSVs are
written at the end, from records sorted by (point, replication).
"""

from __future__ import annotations

import copy
import csv
import datetime as dt
import functools
import hashlib
import io
import itertools
import json
import math
import multiprocessing
import os
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TextIO

import numpy as np
from pydantic import Field

from sim.inputs import InputError, StrictModel, load_yaml, validate
from sim.results import dump_json, provenance, write_text_atomic
from sim.runner import POINT_COLUMNS, run_point
from sim.scenario import scenario_from_data, set_keypath, split_keypath

SWEEP_SCHEMA_VERSION = 1
BACKENDS = ("process", "dask")
DASK_INSTALL_HINT = "pip install 'vgpu-sim[dask]'"

#: Columns of points.csv after the axis columns; ``error`` is empty for a good run.
POINT_META_COLUMNS = ("replication", "point_id", "seed")
#: Columns of aggregate.csv after the axis columns, before the per-metric pairs.
AGGREGATE_META_COLUMNS = ("point_id", "n", "failed")


# -- the sweep file ---------------------------------------------------------------------
class SweepFile(StrictModel):
    """The schema of a sweep file; axis contents are checked by :func:`load_sweep`."""

    schema_version: Literal[1]
    description: str = ""
    base: str | dict[str, Any] = Field(
        description="The base scenario: a path relative to the sweep file, or inline."
    )
    set_: dict[str, Any] = Field(
        default_factory=dict,
        alias="set",
        description="Fixed overrides applied to the base: key path -> value.",
    )
    axes: Annotated[dict[str, list[Any]], Field(min_length=1)] = Field(
        description="Ordered axes: key path -> values, or name -> labelled mappings."
    )
    replications: Annotated[int, Field(ge=1)]
    seed: Annotated[int, Field(ge=0)]


@dataclass(frozen=True)
class AxisValue:
    label: str  # shown in the CSVs and legends
    settings: tuple[tuple[str, Any], ...]  # (key path, value) applied to the base
    identity: Any  # the value as written in the sweep file; hashed into the point id


@dataclass(frozen=True)
class Axis:
    name: str
    compound: bool
    values: tuple[AxisValue, ...]


@dataclass(frozen=True)
class Point:
    index: int  # position in the cartesian product; the order of the CSV rows
    point_id: str
    labels: dict[str, str]  # axis name -> label of this point's value
    config: dict[str, Any]  # the validated effective scenario configuration
    scenario_sha256: str

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.labels.items())


@dataclass(frozen=True)
class Task:
    """One unit of work: a point and a replication, with its derived seed."""

    point: Point
    replication: int
    seed: int

    @property
    def file_name(self) -> str:
        return f"{self.point.point_id}-r{self.replication}.json"


@dataclass(frozen=True)
class Sweep:
    file: Path
    spec: SweepFile
    axes: tuple[Axis, ...]
    points: tuple[Point, ...]
    base_config: dict[str, Any]  # the base with ``set:`` applied, defaults included
    base_dir: Path  # where relative paths inside the scenarios (empirical CSVs) resolve
    sha256: str  # identity of what runs: every point's config, the seeds, replications

    @property
    def name(self) -> str:
        return self.file.stem

    def tasks(self) -> list[Task]:
        return [
            Task(point, rep, derive_seed(self.spec.seed, point.point_id, rep))
            for point in self.points
            for rep in range(self.spec.replications)
        ]


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def point_id_of(identities: dict[str, Any]) -> str:
    """Stable id of a point from its axis values (not its index)."""
    return hashlib.sha256(canonical_json(identities).encode()).hexdigest()[:12]


def derive_seed(master_seed: int, point_id: str, replication: int) -> int:
    """The seed of one (point, replication): independent of order, jobs and backend."""
    seq = np.random.SeedSequence(
        entropy=master_seed, spawn_key=(int(point_id[:8], 16), replication)
    )
    return int(seq.generate_state(1)[0])


def _label_of(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _keypath_problem(config: dict[str, Any], keypath: str) -> str | None:
    """Why ``keypath`` does not name a value of ``config``, or None if it does."""
    try:
        parts = split_keypath(keypath)
    except ValueError as exc:
        return str(exc)
    node: Any = config
    for depth, part in enumerate(parts):
        here = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts[: depth + 1])
        here = here.lstrip(".")
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return f"no such key in the base scenario's effective configuration ({here})"
        elif not isinstance(node, dict) or part not in node:
            return f"no such key in the base scenario's effective configuration ({here})"
        node = node[part]
    if parts == ["seed"]:
        return "the sweep's own seeds replace the scenario's seed; use replications"
    return None


def _parse_axis(file: Path, name: str, values: list[Any], config: dict[str, Any]) -> Axis:
    where = f"axes.{name}"
    if not values:
        raise InputError(file, where, "empty axis: give at least one value")
    compound = any(isinstance(v, dict) and "label" in v for v in values)
    parsed: list[AxisValue] = []
    if compound:
        for i, v in enumerate(values):
            if not isinstance(v, dict) or not isinstance(v.get("label"), str) or not v["label"]:
                raise InputError(
                    file, f"{where}[{i}]", "a compound axis value must be a mapping with a label"
                )
            settings = [(k, x) for k, x in v.items() if k != "label"]
            if not settings:
                raise InputError(file, f"{where}[{i}]", "sets no key path besides its label")
            for keypath, _ in settings:
                problem = _keypath_problem(config, keypath)
                if problem:
                    raise InputError(file, f"{where}[{i}].{keypath}", problem)
            parsed.append(AxisValue(v["label"], tuple(settings), v))
    else:
        problem = _keypath_problem(config, name)
        if problem:
            if any(isinstance(v, dict) for v in values):
                problem += "; for a compound axis, give every value a label"
            raise InputError(file, where, problem)
        parsed = [AxisValue(_label_of(v), ((name, v),), v) for v in values]
    labels = [v.label for v in parsed]
    for i, label in enumerate(labels):
        if label in labels[:i]:
            raise InputError(file, f"{where}[{i}]", f"duplicate value {label!r}")
    return Axis(name, compound, tuple(parsed))


def _rewrap(exc: InputError, file: Path, prefix: str) -> InputError:
    keypath = f"{prefix}{exc.keypath}" if exc.keypath else prefix.rstrip(": .")
    return InputError(file, keypath, exc.problem)


def load_sweep(path: str | Path) -> Sweep:
    """Load and fully validate a sweep file, expanding and validating every point."""
    file = Path(path)
    raw = load_yaml(file)
    if not isinstance(raw, dict):
        raise InputError(file, "(top level)", "a sweep must be a mapping of keys")
    spec = validate(SweepFile, raw, file)

    # The base scenario: its own file names its own errors; an inline one is ours.
    if isinstance(spec.base, str):
        base_file = (file.parent / spec.base).resolve()
        if not base_file.is_file():
            raise InputError(
                file,
                "base",
                f"scenario file {spec.base!r} not found (relative to the sweep file)",
            )
        base_raw = load_yaml(base_file)
        base = scenario_from_data(base_raw, base_file)
        scenario_file = base_file
    else:
        base_raw = spec.base
        try:
            base = scenario_from_data(base_raw, file)
        except InputError as exc:
            raise _rewrap(exc, file, "base.") from None
        scenario_file = file.resolve()
    if not isinstance(base_raw, dict):  # scenario_from_data has refused it already
        raise InputError(file, "base", "the base scenario must be a mapping")

    # Fixed overrides: key paths must exist in the base's effective configuration.
    raw_with_set = copy.deepcopy(base_raw)
    for keypath, value in spec.set_.items():
        problem = _keypath_problem(base.config(), keypath)
        if problem:
            raise InputError(file, f"set.{keypath}", problem)
        try:
            set_keypath(raw_with_set, keypath, value, str(file))
        except InputError as exc:
            raise InputError(file, f"set.{keypath}", exc.problem) from None
    try:
        base_config = scenario_from_data(raw_with_set, scenario_file).config()
    except InputError as exc:
        raise _rewrap(exc, file, "set: ") from None

    axes = tuple(_parse_axis(file, name, values, base_config) for name, values in spec.axes.items())

    points: list[Point] = []
    for index, combo in enumerate(itertools.product(*(a.values for a in axes))):
        labels = {a.name: v.label for a, v in zip(axes, combo, strict=True)}
        identities = {a.name: v.identity for a, v in zip(axes, combo, strict=True)}
        data = copy.deepcopy(raw_with_set)
        where = "point {" + ", ".join(f"{k}={v}" for k, v in labels.items()) + "}"
        try:
            for value in combo:
                for keypath, setting in value.settings:
                    set_keypath(data, keypath, copy.deepcopy(setting), str(file))
            scenario = scenario_from_data(data, scenario_file)
        except InputError as exc:
            raise _rewrap(exc, file, f"{where}: ") from None
        points.append(
            Point(index, point_id_of(identities), labels, scenario.config(), scenario.sha256())
        )
    ids = [p.point_id for p in points]
    if len(set(ids)) != len(ids):  # only if two axes hash alike; never seen, but be sure
        raise InputError(file, "axes", "two points have the same id")

    identity = {
        "points": [[p.point_id, p.scenario_sha256] for p in points],
        "replications": spec.replications,
        "seed": spec.seed,
    }
    return Sweep(
        file=file,
        spec=spec,
        axes=axes,
        points=tuple(points),
        base_config=base_config,
        base_dir=scenario_file.parent,
        sha256=hashlib.sha256(canonical_json(identity).encode()).hexdigest(),
    )


def default_out_dir(sweep_file: str | Path, root: str | Path = "results") -> Path:
    return Path(root) / "sweeps" / Path(sweep_file).stem


# -- the unit of work and the executors --------------------------------------------------
def execute_task(config: dict[str, Any], seed: int, base_dir: str) -> dict[str, Any]:
    """Run one (point, replication) and return its outcome; runs inside a worker.

    An exception becomes an outcome with its error, so that one bad point never stops
    the sweep; KeyboardInterrupt is not an ``Exception`` and still interrupts.
    """
    started = time.perf_counter()
    try:
        record = run_point(config, seed, base_dir)
    except Exception as exc:
        return {
            "record": None,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
            "wall_s": time.perf_counter() - started,
        }
    return {"record": record, "error": None, "wall_s": time.perf_counter() - started}


WorkItem = tuple[dict[str, Any], int, str]  # (config, seed, base_dir): plain data only
Outcomes = Iterator[tuple[int, dict[str, Any]]]  # (task index, outcome), completion order


def _failure(exc: BaseException) -> dict[str, Any]:
    """The outcome of a task whose executor failed (a worker died, a lost connection)."""
    if isinstance(exc, KeyboardInterrupt):
        raise KeyboardInterrupt
    return {
        "record": None,
        "error": f"{type(exc).__name__}: {exc}",
        "traceback": "".join(traceback.format_exception(exc)),
        "wall_s": None,
    }


def _run_serial(items: list[tuple[int, WorkItem]]) -> Outcomes:
    for key, (config, seed, base_dir) in items:
        yield key, execute_task(config, seed, base_dir)


def process_start_method() -> str:
    """How the process pool starts its workers: fork when that is safe, else forkserver.

    fork is the cheapest: workers start in milliseconds with everything imported. It is
    unsafe when the parent runs other threads (a tqdm monitor, a dask client, a Jupyter
    kernel's), since a child forked while one of them holds a lock can deadlock; so it
    is used only on Linux from a single-threaded parent, and the pool forks all its
    workers before the progress bar starts a thread. Otherwise forkserver: workers are
    forked from a single-threaded server that imported ``sim.sweep`` once (~0.4 s the
    first time in a process); spawn, where there is no forkserver, pays that import in
    every worker. Measured on the 2-core machine (8 points of ~0.9 s): jobs 2 over
    jobs 1 was 1.96x with fork, 1.74x with a fresh forkserver, 1.73x with spawn.
    """
    if sys.platform == "linux" and threading.active_count() == 1:
        return "fork"
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _run_process_pool(items: list[tuple[int, WorkItem]], jobs: int) -> Outcomes:
    """Submit everything now (so that fork happens before any thread starts), then
    yield outcomes as they complete."""
    ctx = multiprocessing.get_context(process_start_method())
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload([__name__])
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(items)), mp_context=ctx)
    try:
        pending = {pool.submit(execute_task, *item): key for key, item in items}
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    return _collect(pool, pending)


def _collect(pool: ProcessPoolExecutor, pending: dict[Future[dict[str, Any]], int]) -> Outcomes:
    try:
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            # Yield in submission order within a batch: no effect on the output files,
            # which are re-sorted, but it keeps the progress lines tidy.
            for fut in sorted(done, key=pending.__getitem__):
                key = pending.pop(fut)
                exc = fut.exception()
                yield key, (fut.result() if exc is None else _failure(exc))
    except BaseException:
        # Cancel here rather than rely on shutdown(cancel_futures=True): the pool's
        # manager thread honours that flag only while the executor object is alive, and
        # it is collected as soon as this generator unwinds; the pool would then go on
        # running every queued task before the interpreter could exit.
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise InputError(
            "--backend dask",
            "",
            f"dask.distributed is not installed; install it with: {DASK_INSTALL_HINT}",
        ) from None
    return distributed


def _run_dask(items: list[tuple[int, WorkItem]], jobs: int, scheduler: str | None) -> Outcomes:
    distributed = _import_distributed()
    cluster = None
    if scheduler is None:
        # One single-threaded worker process per job: the model is pure Python and
        # holds the GIL, so threads would not run points in parallel.
        cluster = distributed.LocalCluster(
            n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = distributed.Client(cluster)
    else:
        try:
            client = distributed.Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise InputError("--scheduler", scheduler, f"cannot connect: {exc}") from None
    try:
        configs, seeds, base_dirs = zip(*(item for _, item in items), strict=True)
        futures = client.map(execute_task, configs, seeds, base_dirs, pure=False)
        key_of = {fut.key: key for fut, (key, _) in zip(futures, items, strict=True)}
        for fut in distributed.as_completed(futures):
            exc = fut.exception() if fut.status == "error" else None
            yield key_of[fut.key], (fut.result() if exc is None else _failure(exc))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def make_executor(
    backend: str, jobs: int, scheduler: str | None = None
) -> Callable[[list[tuple[int, WorkItem]]], Outcomes]:
    """The executor for ``backend``; checks that an optional backend is installed."""
    if jobs < 1:
        raise InputError("--jobs", str(jobs), "must be at least 1")
    if backend == "dask":
        _import_distributed()
        return functools.partial(_run_dask, jobs=jobs, scheduler=scheduler)
    if backend != "process":
        raise InputError("--backend", backend, f"unknown backend; choose one of {BACKENDS}")
    if scheduler is not None:
        raise InputError("--scheduler", scheduler, "only the dask backend uses a scheduler")
    if jobs == 1:
        return _run_serial
    return functools.partial(_run_process_pool, jobs=jobs)


# -- progress -------------------------------------------------------------------------------
class Progress:
    """A tqdm bar over completed runs on a terminal; otherwise one plain line per run."""

    def __init__(self, name: str, total: int, done: int, mode: str, stream: TextIO) -> None:
        self.name, self.total, self.done = name, total, done
        self.stream = stream
        self.bar = None
        self.mode = mode
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=done, desc=name, unit="run", leave=False, file=stream
            )

    def update(self, task: Task, outcome: dict[str, Any]) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            if outcome["error"]:
                self.bar.write(f"{self._what(task)}: FAILED: {outcome['error']}", file=self.stream)
        elif self.mode == "lines":
            wall = outcome.get("wall_s")
            took = f" ({wall:.2f} s)" if wall is not None else ""
            status = "ok" if not outcome["error"] else f"FAILED: {outcome['error']}"
            print(
                f"[{self.done}/{self.total}] {self._what(task)}: {status}{took}", file=self.stream
            )
            self.stream.flush()

    def _what(self, task: Task) -> str:
        return f"{self.name} {task.point.describe()} r{task.replication}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- results --------------------------------------------------------------------------------
@dataclass
class SweepOutcome:
    out_dir: Path
    tasks: int
    reused: int
    ran: int
    failed: int
    wall_s: float
    files: list[Path] = field(default_factory=list)


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


def _csv_text(header: Sequence[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([_format(v) for v in row] for row in rows)
    return buf.getvalue()


@functools.cache
def t_quantile_975(df: int) -> float:
    """Two-sided 95% Student t quantile, t(0.975, df), without SciPy.

    Bisection on the t CDF, computed as 1/2 plus Simpson's rule over the density from 0
    (the density is smooth, so 4096 intervals give ~1e-10). 12.706 for df=1, 4.303 for
    df=2, 1.96 as df grows.
    """
    if df < 1:
        return math.nan
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float) -> float:
        t = np.linspace(0.0, x, 4097)
        f = np.exp(log_norm - (df + 1) / 2 * np.log1p(t * t / df))
        h = x / 4096
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())

    lo, hi = 0.0, 64.0  # t(0.975, 1) = 12.7 is the largest
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < 0.975 else (lo, mid)
    return (lo + hi) / 2


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of its 95% confidence interval (Student t); nan if n < 2."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        return math.nan, math.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan
    half = t_quantile_975(len(x) - 1) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return mean, half


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


def _manifest(
    sweep: Sweep, status: str, argv: list[str] | None, started: str, wall_s: float | None
) -> dict[str, Any]:
    return {
        **provenance(argv, started, wall_s),
        "status": status,
        "sweep_file": str(sweep.file),
        "sweep_sha256": sweep.sha256,
        "sweep": sweep.spec.model_dump(mode="json", by_alias=True),
        "master_seed": sweep.spec.seed,
        "replications": sweep.spec.replications,
        "axes": [a.name for a in sweep.axes],
        "base_config": sweep.base_config,
        "points": [
            {"point_id": p.point_id, "axes": p.labels, "scenario_sha256": p.scenario_sha256}
            for p in sweep.points
        ],
    }


def _claim_directory(out_dir: Path, sweep: Sweep) -> None:
    """Refuse a directory that holds anything but results of this very sweep."""
    manifest = out_dir / "sweep.json"
    if manifest.is_file():
        try:
            previous = json.loads(manifest.read_text(encoding="utf-8"))
            previous_sha = previous.get("sweep_sha256")
        except (OSError, ValueError, AttributeError) as exc:
            raise InputError(manifest, "", f"cannot be read: {exc}") from None
        if previous_sha != sweep.sha256:
            raise InputError(
                manifest,
                "sweep_sha256",
                f"holds results of a different sweep ({str(previous_sha)[:12]}, this one is "
                f"{sweep.sha256[:12]}); use --out for a new directory or remove it",
            )
    elif out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(out_dir, "--out", "exists and is not a sweep results directory")


def _finished(path: Path, task: Task) -> dict[str, Any] | None:
    """A previously written outcome of ``task`` that succeeded, or None to run it."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (
        not isinstance(saved, dict)
        or saved.get("error")
        or not isinstance(saved.get("record"), dict)
        or saved.get("seed") != task.seed
        or saved.get("scenario_sha256") != task.point.scenario_sha256
    ):
        return None
    return saved


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
) -> SweepOutcome:
    """Run every unfinished (point, replication) of ``sweep`` into ``out_dir``.

    ``progress``: "bar", "lines", "none", or None for a bar on a terminal and lines
    otherwise. Returns counts; ``failed`` > 0 means some runs recorded an error. On
    KeyboardInterrupt the finished runs stay on disk and no CSV is written.
    """
    log = log if log is not None else sys.stderr
    out = Path(out_dir)
    execute = make_executor(backend, jobs, scheduler)
    _claim_directory(out, sweep)
    started_utc = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    write_text_atomic(
        out / "sweep.json", dump_json(_manifest(sweep, "running", argv, started_utc, None))
    )

    tasks = sweep.tasks()
    points_dir = out / "points"
    outcomes: dict[int, dict[str, Any]] = {}
    for i, task in enumerate(tasks):
        saved = _finished(points_dir / task.file_name, task)
        if saved is not None:
            outcomes[i] = saved
    reused = len(outcomes)
    todo = [
        (i, (t.point.config, t.seed, str(sweep.base_dir)))
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
    except KeyboardInterrupt:
        bar.close()
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
    write_text_atomic(files[0], _csv_text(*points_table(axes, tasks, outcomes)))
    write_text_atomic(files[1], _csv_text(*aggregate_table(axes, tasks, outcomes)))
    wall_s = time.perf_counter() - t0
    status = "failed" if failed else "complete"
    manifest = _manifest(sweep, status, argv, started_utc, wall_s)
    manifest["runs"] = {"total": len(tasks), "reused": reused, "ran": len(todo), "failed": failed}
    write_text_atomic(out / "sweep.json", dump_json(manifest))
    if plot:
        from sim.plot import write_figures

        files += write_figures(out)
    return SweepOutcome(out, len(tasks), reused, len(todo), failed, wall_s, files)


# -- reading results back -------------------------------------------------------------------
@dataclass(frozen=True)
class SweepResults:
    """A sweep's CSVs read back: axis columns as text, every other column as numbers."""

    directory: Path
    axes: tuple[str, ...]
    points: list[dict[str, Any]]
    aggregate: list[dict[str, Any]]
    description: str


def _read_csv(path: Path, first_meta: str) -> tuple[list[str], list[dict[str, Any]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(path, "", f"cannot be read: {exc}") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header or first_meta not in header:
        raise InputError(path, "", f"not a sweep CSV (no {first_meta!r} column)")
    n_axes = header.index(first_meta)
    rows = []
    for line in reader:
        row: dict[str, Any] = {}
        for i, (name, cell) in enumerate(zip(header, line, strict=True)):
            if i < n_axes or name in ("point_id", "error"):
                row[name] = cell
            else:
                row[name] = float(cell) if cell else math.nan
        rows.append(row)
    return header[:n_axes], rows


def load_results(directory: str | Path) -> SweepResults:
    """Read ``points.csv`` and ``aggregate.csv`` of a sweep results directory."""
    d = Path(directory)
    axes, points = _read_csv(d / "points.csv", POINT_META_COLUMNS[0])
    _, aggregate = _read_csv(d / "aggregate.csv", AGGREGATE_META_COLUMNS[0])
    description = ""
    manifest = d / "sweep.json"
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
            description = data.get("sweep", {}).get("description", "") or ""
        except ValueError:
            pass
    return SweepResults(d, tuple(axes), points, aggregate, description)


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


# -- speed-up figure -----------------------------------------------------------------------
def measure_sweep_speedup(
    jobs: Sequence[int] = (1, 2), points: int = 8, duration_ms: float = 2000.0
) -> dict[str, Any]:
    """Wall time of the same sweep run with each ``jobs`` value, and the speed-up.

    A benchmark figure, never a timed test. The sweep has ``points`` points of nearly
    equal cost (xen-4.6 + rbtree, page counts 256 + i, one replication each), so the
    ideal speed-up is the number of jobs. The time covers everything ``vgpu-sim sweep``
    does except drawing the figures: validation, pool start-up, runs, atomic writes and
    CSVs. ``speedup`` is the time with the first ``jobs`` value over the last.
    """
    if points < 1 or not jobs:
        raise ValueError("need at least one point and one jobs value")
    sweep_yaml = {
        "schema_version": SWEEP_SCHEMA_VERSION,
        "description": "speed-up benchmark",
        "base": {
            "schema_version": 1,
            "platform": "bdw",
            "duration_ms": duration_ms,
            "warmup_ms": 5,
            "xen": {"design": "xen-4.6", "rangeset": "rbtree", "max_nr_io_ranges": None},
            "guests": [{"name": "vm1", "vcpus": 2, "vgpu": {}}],
        },
        "axes": {"guests[0].vgpu.ppgtt.live_pages": [256 + i for i in range(points)]},
        "replications": 1,
        "seed": 1,
    }
    walls: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="vgpu-sim-speedup-") as tmp:
        sweep_file = Path(tmp) / "speedup.yaml"
        sweep_file.write_text(json.dumps(sweep_yaml), encoding="utf-8")  # JSON is YAML
        sweep = load_sweep(sweep_file)
        for n in jobs:
            t0 = time.perf_counter()
            run_sweep(sweep, Path(tmp) / f"jobs{n}", jobs=n, progress="none", plot=False)
            walls[n] = time.perf_counter() - t0
    return {
        "points": points,
        "duration_ms": duration_ms,
        "cpu_count": os.cpu_count(),
        "start_method": process_start_method(),
        "wall_s": walls,
        "speedup": walls[jobs[0]] / walls[jobs[-1]],
    }
