"""Executors: run a sweep's tasks serially, on a local process pool, or on dask.distributed.

Every executor ships plain data only, ``(config, seed, base_dir, max_events)``, to
:func:`execute_task`, which runs :func:`sim.model.runner.run_point` and turns an exception
into an outcome with its error, so that one bad point never stops the sweep. Outcomes
come back in completion order as ``(task index, outcome)``; the caller re-sorts them.
dask is the optional extra ``vgpu-sim[dask]``, imported only when chosen; a scheduler
given by address is connected to when the executor is made, before anything is written.

Pool workers exit on their own when the sweep's process dies, even by SIGKILL: Linux's
``PR_SET_PDEATHSIG`` kills them when their parent goes, and a watchdog thread in each
worker exits it once its parent changes or the sweep's process is gone (other systems,
and the forkserver's extra generation).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from sim.inputs import InputError, echo
from sim.model.budget import DEFAULT_MAX_EVENTS
from sim.model.runner import run_point
from sim.results import process_alive

BACKENDS = ("process", "dask")

DASK_INSTALL_HINT = "pip install 'vgpu-sim[dask]'"


def execute_task(
    config: dict[str, Any], seed: int, base_dir: str, max_events: int = DEFAULT_MAX_EVENTS
) -> dict[str, Any]:
    """Run one (point, replication) and return its outcome; runs inside a worker.

    An exception becomes an outcome with its error, so that one bad point never stops
    the sweep; KeyboardInterrupt is not an ``Exception`` and still interrupts.
    """
    started = time.perf_counter()
    try:
        record = run_point(config, seed, base_dir, max_events=max_events)
    except Exception as exc:
        return {
            "record": None,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
            "wall_s": time.perf_counter() - started,
        }
    return {"record": record, "error": None, "wall_s": time.perf_counter() - started}


WorkItem = tuple[dict[str, Any], int, str, int]  # (config, seed, base_dir, max_events)

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
    for key, item in items:
        yield key, execute_task(*item)


PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCH_INTERVAL_S = 0.25


def _exit_with_parent(sweep_pid: int) -> None:
    """The pool's worker initializer: make this worker exit when the sweep dies.

    ``PR_SET_PDEATHSIG`` (prctl(2)) has the kernel kill it when its parent exits; a
    watchdog thread also exits it when its parent changes or the sweep's process is gone,
    which covers other systems and a forkserver between the sweep and its workers.
    SIGTERM gets its default action back: the sweep's handler turns it into an
    interrupt, which a worker has no use for.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform == "linux":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    parent = os.getppid()

    def orphaned() -> bool:
        return os.getppid() != parent or not process_alive(sweep_pid)

    if orphaned():  # the sweep died before the kernel was told
        os._exit(1)

    def watch() -> None:
        while not orphaned():
            time.sleep(WATCH_INTERVAL_S)
        os._exit(1)

    threading.Thread(target=watch, name="vgpu-sim-parent-watch", daemon=True).start()


def process_start_method() -> str:
    """How the process pool starts its workers: fork when that is safe, else forkserver.

    fork is the cheapest: workers start in milliseconds with everything imported. It is
    unsafe when the parent runs other threads (a tqdm monitor, a dask client, a Jupyter
    kernel's), since a child forked while one of them holds a lock can deadlock; so it
    is used only on Linux from a single-threaded parent, and the pool forks all its
    workers before the progress bar starts a thread. Otherwise forkserver: workers are
    forked from a single-threaded server that imported ``sim.study.executors`` once (~0.4 s the
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
    pool = ProcessPoolExecutor(
        max_workers=min(jobs, len(items)),
        mp_context=ctx,
        initializer=_exit_with_parent,
        initargs=(os.getpid(),),
    )
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
        # Stop the workers rather than cancel the queued futures. Cancelling is not
        # enough: the pool's manager thread honours shutdown(cancel_futures=True) only
        # while the executor object is alive, and it is collected as soon as this
        # generator unwinds, so the pool would run every queued task before the
        # interpreter could exit; and CPython 3.11's manager then fails on the futures
        # we cancelled ("InvalidStateError: CANCELLED", printed as a thread's traceback)
        # when it marks the broken pool's work failed. With its workers gone the pool is
        # broken: it runs nothing more and fails whatever was queued, which nobody
        # collects. Workers take SIGTERM's default.
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            with contextlib.suppress(OSError, AttributeError):
                process.terminate()
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


def _connect(distributed: Any, scheduler: str) -> Any:
    """A client of the scheduler at ``scheduler``; a bad or unreachable address is bad
    input, found before the sweep claims its output directory."""
    try:
        return distributed.Client(scheduler, timeout="20s")
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        raise InputError("--scheduler", echo(scheduler), f"cannot connect: {exc}") from None


def _run_dask(items: list[tuple[int, WorkItem]], jobs: int, client: Any = None) -> Outcomes:
    distributed = _import_distributed()
    cluster = None
    if client is None:
        # One single-threaded worker process per job: the model is pure Python and
        # holds the GIL, so threads would not run points in parallel.
        cluster = distributed.LocalCluster(
            n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = distributed.Client(cluster)
    try:
        columns = zip(*(item for _, item in items), strict=True)
        futures = client.map(execute_task, *columns, pure=False)
        key_of = {fut.key: key for fut, (key, _) in zip(futures, items, strict=True)}
        for fut in distributed.as_completed(futures):
            exc = fut.exception() if fut.status == "error" else None
            yield key_of[fut.key], (fut.result() if exc is None else _failure(exc))
    finally:
        if cluster is not None:
            client.close()
            cluster.close()


@dataclass
class Executor:
    """Runs work items, yielding outcomes in completion order; ``close()`` it after."""

    run: Callable[[list[tuple[int, WorkItem]]], Outcomes]
    close: Callable[[], None] = lambda: None

    def __call__(self, items: list[tuple[int, WorkItem]]) -> Outcomes:
        return self.run(items)


def make_executor(backend: str, jobs: int, scheduler: str | None = None) -> Executor:
    """The executor for ``backend``; checks that an optional backend is installed and
    connects to ``scheduler`` now, so that a bad address is refused before any output."""
    if jobs < 1:
        raise InputError("--jobs", str(jobs), "must be at least 1")
    if backend == "dask":
        distributed = _import_distributed()
        if scheduler is None:
            return Executor(functools.partial(_run_dask, jobs=jobs))
        client = _connect(distributed, scheduler)
        return Executor(functools.partial(_run_dask, jobs=jobs, client=client), client.close)
    if backend != "process":
        raise InputError("--backend", echo(backend), f"unknown backend; choose one of {BACKENDS}")
    if scheduler is not None:
        raise InputError("--scheduler", echo(scheduler), "only the dask backend uses a scheduler")
    if jobs == 1:
        return Executor(_run_serial)
    return Executor(functools.partial(_run_process_pool, jobs=jobs))
