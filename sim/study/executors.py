"""Executors: run a sweep's tasks serially, on a local process pool, or on dask.distributed.

Every executor ships plain data only, ``(config, seed, base_dir)``, to
:func:`execute_task`, which runs :func:`sim.model.runner.run_point` and turns an exception
into an outcome with its error, so that one bad point never stops the sweep. Outcomes
come back in completion order as ``(task index, outcome)``; the caller re-sorts them.
dask is the optional extra ``vgpu-sim[dask]``, imported only when chosen.
"""

from __future__ import annotations

import functools
import multiprocessing
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from sim.inputs import InputError
from sim.model.runner import run_point

BACKENDS = ("process", "dask")

DASK_INSTALL_HINT = "pip install 'vgpu-sim[dask]'"


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
