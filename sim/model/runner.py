"""One run, end to end: scenario -> model -> result directory (or an in-memory record)."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from sim.model.budget import DEFAULT_MAX_EVENTS
from sim.model.recorder import RunResult, Trap
from sim.model.replay import ReplayOpener
from sim.model.scenario import Scenario, guest_instances
from sim.model.simulation import Simulation
from sim.model.summary import manifest, overall, summarize, summary_csv, totals
from sim.results import atomic_directory, dump_json, write_text_atomic

TRACE_COLUMNS = (
    "vcpu",
    "kind",
    "access",
    "dir",
    "address",
    "size",
    "server",
    "visits",
    "t_trap_ns",
    "t_selected_ns",
    "t_served_ns",
    "t_resumed_ns",
    "warmup",
)


#: An extra per-trap output of a run: given the run's (temporary) directory, a context that
#: yields the trap callback and finishes its file on exit. ``sim.trace`` provides the
#: xentrace capture this way, so the model never imports it.
TrapOutput = Callable[[Path], contextlib.AbstractContextManager[Callable[[Trap], None]]]


class NoTrapMeasuredError(RuntimeError):
    """A sweep point whose run measured no trap: its statistics would be empty."""


def _trace_writer(fh: TextIO, warmup_ns: float) -> Callable[[Trap], None]:
    """One row per trap; ``warmup`` is 1 for a trap before ``warmup_ms`` (left out of the
    statistics), else 0."""
    w = csv.writer(fh, lineterminator="\n")
    w.writerow(TRACE_COLUMNS)

    def write(t: Trap) -> None:
        a = t.access
        w.writerow(
            (
                t.vcpu.name,
                t.kind,
                a.kind,
                "write" if a.is_write else "read",
                f"{a.addr:#x}",
                a.size,
                t.handler,
                t.visits,
                f"{t.t_trap:.1f}",
                f"{t.t_selected:.1f}",
                f"{t.t_served:.1f}",
                f"{t.t_resumed:.1f}",
                1 if t.t_trap < warmup_ns else 0,
            )
        )

    return write


def _fan_out(sinks: list[Callable[[Trap], None]]) -> Callable[[Trap], None] | None:
    if len(sinks) <= 1:
        return sinks[0] if sinks else None

    def every(trap: Trap) -> None:
        for sink in sinks:
            sink(trap)

    return every


def default_run_dir(root: Path, scenario: Scenario, seed: int) -> Path:
    # The schema makes a name one path component that does not start with a dot; a
    # Scenario built around the schema must not write outside ``root`` either.
    if Path(scenario.name).name != scenario.name or scenario.name.startswith("."):
        raise ValueError(f"scenario name {scenario.name!r} is not one path component")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    base = root / scenario.name / f"{stamp}-seed{seed}-{scenario.sha256()[:8]}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def run_to_directory(
    scenario: Scenario,
    seed: int,
    out_dir: Path,
    *,
    base_dir: Path,
    scenario_file: str | None,
    trace: bool = False,
    progress: Callable[[float, float], None] | None = None,
    argv: list[str] | None = None,
    outputs: Sequence[TrapOutput] = (),
    replay_opener: ReplayOpener | None = None,
    max_events: int = DEFAULT_MAX_EVENTS,
    on_start: Callable[[], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run and write ``manifest.json``, ``summary.csv`` (and ``trace.csv``, and whatever
    ``outputs`` write) atomically. ``on_start`` is called once the model is built, just
    before it runs."""
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    with atomic_directory(out_dir) as tmp:
        with contextlib.ExitStack() as stack:
            sinks: list[Callable[[Trap], None]] = []
            if trace:
                trace_fh = stack.enter_context(
                    (tmp / "trace.csv").open("w", encoding="utf-8", newline="")
                )
                sinks.append(_trace_writer(trace_fh, scenario.warmup_ms * 1e6))
            sinks.extend(stack.enter_context(output(tmp)) for output in outputs)
            sim = Simulation(
                scenario,
                seed,
                base_dir=base_dir,
                trace=_fan_out(sinks),
                replay_opener=replay_opener,
            )
            if on_start is not None:  # the model is built: its inputs were good
                on_start()
            result = sim.run(progress=progress, max_events=max_events)
        rows = summarize(result)
        man = manifest(
            scenario,
            seed,
            result,
            scenario_file=scenario_file,
            argv=argv,
            started_utc=started,
        )
        write_text_atomic(tmp / "summary.csv", summary_csv(rows))
        write_text_atomic(tmp / "manifest.json", dump_json(man))
    return rows, man["totals"]


def run_in_memory(
    scenario: Scenario, seed: int, base_dir: Path, max_events: int = DEFAULT_MAX_EVENTS
) -> RunResult:
    return Simulation(scenario, seed, base_dir=base_dir).run(max_events=max_events)


#: Columns of one sweep point's record, after the sweep's axes and replication.
POINT_COLUMNS = (
    "wp_pages",
    "ranges",
    "ranges_max",
    "accesses",
    "p50_ns",
    "p99_ns",
    "mean_ns",
    "vgpu_p50_ns",
    "vgpu_p99_ns",
    "mean_visits",
    "mean_walk_ns",
    "failed_maps",
    "untracked_ppgtt_writes",
    "throughput_per_s",
    "vgpus",
    "dom0_util_mean",
    "dom0_util_max",
    "dom0_busy_cpus",
    "dm_util_max",
    "lock_wait_ns",
)


def run_point(
    config: dict[str, Any], seed: int, base_dir: str, max_events: int = DEFAULT_MAX_EVENTS
) -> dict[str, Any]:
    """Run one validated scenario configuration and return its point record.

    Picklable inputs and outputs only (plain dicts), so that any executor can ship it.
    ``wp_pages`` is the write-protected page count the scenario asks for (summed over
    guests); ``ranges`` is the XenGT servers' time-averaged rangeset node count during
    the measured part of the run (summed over guests), ``ranges_max`` its maximum.
    ``vgpu_p50_ns`` and ``vgpu_p99_ns`` take only the traps XenGT served (register,
    port and page-table accesses of the vGPUs), leaving out QEMU's slower service.
    ``mean_walk_ns`` is the time a trap's lookups spent walking rangeset nodes, as the
    cache model prices them. ``vgpus`` counts the guests (each has a vGPU); the
    ``dom0_*`` columns are dom0's vCPU utilisation (mean, busiest, and the sum in CPUs'
    worth), ``dm_util_max`` the busiest device-model thread's, ``lock_wait_ns`` the mean
    time a trap spun on a rangeset lock held by a map or unmap. A run that measured no
    trap raises :class:`NoTrapMeasuredError`: a point with no data.
    """
    scenario = Scenario.model_validate(config, strict=False)
    result = run_in_memory(scenario, seed, Path(base_dir), max_events)
    tot = totals(result)
    if not tot["accesses"]:
        raise NoTrapMeasuredError(no_trap_message(scenario))
    stats = tot["overall"]
    vgpu = overall(result, server="xengt")
    use = tot["cpu_use"]
    instances = guest_instances(scenario)
    return {
        "wp_pages": sum(g.vgpu.ppgtt.live_pages for g, _ in instances),
        "ranges": sum(r["mean"] for r in tot["ranges"].values()),
        "ranges_max": sum(r["max"] for r in tot["ranges"].values()),
        "accesses": tot["accesses"],
        "p50_ns": stats["p50_ns"],
        "p99_ns": stats["p99_ns"],
        "mean_ns": stats["mean_ns"],
        "vgpu_p50_ns": vgpu["p50_ns"],
        "vgpu_p99_ns": vgpu["p99_ns"],
        "mean_visits": stats["mean_visits"],
        "mean_walk_ns": tot["walk_per_trap_ns"],
        "failed_maps": tot["failed_maps"],
        "untracked_ppgtt_writes": tot["untracked_ppgtt_writes"],
        "throughput_per_s": tot["throughput_per_s"],
        "vgpus": len(instances),
        "dom0_util_mean": use["dom0_mean"],
        "dom0_util_max": use["dom0_max"],
        "dom0_busy_cpus": use["dom0_busy_cpus"],
        "dm_util_max": max(use["threads"].values(), default=0.0),
        "lock_wait_ns": tot["lock_wait_per_trap_ns"],
    }


def no_trap_message(scenario: Scenario) -> str:
    measured = scenario.duration_ms - scenario.warmup_ms
    return (
        f"no trap was measured in the {measured:g} ms after warm-up, so there are no "
        "statistics: lengthen duration_ms or shorten the guests' think time"
    )
