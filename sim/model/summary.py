"""A run's results as tables: per-(access, server) rows, totals, the manifest, the console.

Computed from the plain records of :class:`sim.model.recorder.RunResult` with numpy.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np

from sim.model.recorder import RunResult
from sim.model.scenario import ACCESS_KINDS, Scenario
from sim.results import provenance

SUMMARY_COLUMNS = (
    "access_type",
    "server",
    "count",
    "mean_ns",
    "p50_ns",
    "p90_ns",
    "p99_ns",
    "max_ns",
    "mean_visits",
    "dm_util",
)


def _fmt(x: float) -> str:
    # Fixed precision keeps summary.csv byte-identical for identical runs.
    return f"{x:.1f}"


def server_util(result: RunResult) -> dict[str, float]:
    """Mean utilisation of each device model's threads, by server label (``vm1/xengt``)."""
    span = result.measured_ns
    busy: dict[str, list[float]] = {}
    for name, b, _ in result.usage.threads:
        busy.setdefault(name.rsplit("/", 1)[0], []).append(b)
    return {k: sum(v) / (len(v) * span) if span > 0 else 0.0 for k, v in busy.items()}


def summarize(result: RunResult) -> list[dict[str, Any]]:
    """One row per access type x server, in a stable order, with the utilisation of the
    server's device-model threads next to the latencies (``dm_util``; empty for Xen's
    own handlers)."""
    order = {k: i for i, k in enumerate(ACCESS_KINDS)}
    util = server_util(result)
    rows = []
    for (kind, server), (lat, visits) in sorted(
        result.groups.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1])
    ):
        lat_np = np.frombuffer(lat, dtype=np.float64) if len(lat) else np.zeros(0)
        vis_np = np.frombuffer(visits, dtype=np.int64) if len(visits) else np.zeros(0)
        p50, p90, p99 = np.percentile(lat_np, [50, 90, 99])
        rows.append(
            {
                "access_type": kind,
                "server": server,
                "count": len(lat_np),
                "mean_ns": float(lat_np.mean()),
                "p50_ns": float(p50),
                "p90_ns": float(p90),
                "p99_ns": float(p99),
                "max_ns": float(lat_np.max()),
                "mean_visits": float(vis_np.mean()),
                "dm_util": util.get(server),
            }
        )
    return rows


def overall(result: RunResult, server: str | None = None) -> dict[str, float]:
    """Latency and visit statistics over every trap of the run, or over the traps that
    servers of one name handled (``server="xengt"``: every guest's vGPU)."""
    groups = [
        g
        for (_, handler), g in result.groups.items()
        if server is None or handler.rsplit("/", 1)[-1] == server
    ]
    lats = [np.frombuffer(lat, dtype=np.float64) for lat, _ in groups if len(lat)]
    vis = [np.frombuffer(v, dtype=np.int64) for _, v in groups if len(v)]
    if not lats:
        nan = float("nan")
        return {"mean_ns": nan, "p50_ns": nan, "p99_ns": nan, "mean_visits": nan}
    all_lat = np.concatenate(lats)
    all_vis = np.concatenate(vis)
    p50, p99 = np.percentile(all_lat, [50, 99])
    return {
        "mean_ns": float(all_lat.mean()),
        "p50_ns": float(p50),
        "p99_ns": float(p99),
        "mean_visits": float(all_vis.mean()),
    }


def cpu_use(result: RunResult) -> dict[str, Any]:
    """Utilisation (busy share of the measured window) of every dom0 vCPU, device-model
    thread and shared pCPU: the cost a guest's traps put on the host.

    ``dom0_vcpus`` lists the shared pool (``host.dom0_vcpus``); without one each thread
    has a dom0 vCPU of its own, so its utilisation is the thread's. ``dom0_mean`` and
    ``dom0_max`` summarise dom0's vCPUs either way; ``dom0_busy_cpus`` is dom0's total
    busy time in CPUs' worth (the sum of its vCPUs' utilisation).
    """
    span = result.measured_ns
    u = result.usage

    def share(busy: float) -> float:
        return busy / span if span > 0 else 0.0

    threads = {name: share(busy) for name, busy, _ in u.threads}
    pool = {name: share(busy) for name, busy in u.dom0_vcpus}
    dom0 = list(pool.values()) if pool else list(threads.values())
    return {
        "dom0_vcpus": pool,
        "threads": threads,
        "served": {name: served for name, _, served in u.threads},
        "pcpus": {name: share(busy) for name, busy in u.pcpus},
        "dom0_mean": sum(dom0) / len(dom0) if dom0 else 0.0,
        "dom0_max": max(dom0, default=0.0),
        "dom0_busy_cpus": sum(dom0),
    }


def totals(result: RunResult) -> dict[str, Any]:
    c = result.counters
    measured_s = result.measured_ns / 1e9
    locks = result.usage.locks
    waits = sum(v["reader_wait_ns"] for v in locks.values())
    return {
        "accesses": c.accesses,
        "traps_including_warmup": c.traps_total,
        "simulated_ns": result.sim_time_ns,
        "measured_ns": result.measured_ns,
        "throughput_per_s": c.accesses / measured_s if measured_s > 0 else 0.0,
        "failed_maps": c.failed_maps,
        "failed_map_errnos": dict(sorted(c.failed_map_errnos.items())),
        "untracked_ppgtt_writes": c.untracked_ppgtt_writes,
        "maps": c.maps,
        "unmaps": c.unmaps,
        "failed_unmaps": c.failed_unmaps,
        "mean_map_visits": c.map_visits / c.maps if c.maps else 0.0,
        "hypercall_ns": c.hypercall_ns,
        "null_handled": c.null_handled,
        "ranges": result.ranges,
        "overall": overall(result),
        "cpu_use": cpu_use(result),
        "locks": locks,
        "lock_wait_per_trap_ns": waits / c.traps_total if c.traps_total else 0.0,
        "walk_per_trap_ns": c.walk_ns / c.accesses if c.accesses else 0.0,
    }


def summary_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SUMMARY_COLUMNS)
    for r in rows:
        w.writerow(
            [
                r["access_type"],
                r["server"],
                r["count"],
                *(_fmt(r[k]) for k in ("mean_ns", "p50_ns", "p90_ns", "p99_ns", "max_ns")),
                f"{r['mean_visits']:.3f}",
                "" if r["dm_util"] is None else f"{r['dm_util']:.4f}",
            ]
        )
    return buf.getvalue()


def manifest(
    scenario: Scenario,
    seed: int,
    result: RunResult,
    *,
    scenario_file: str | None,
    argv: list[str] | None,
    started_utc: str,
) -> dict[str, Any]:
    return {
        **provenance(argv, started_utc, result.wall_s),
        "exception": None,
        "scenario_file": scenario_file,
        "scenario_name": scenario.name,
        "scenario_sha256": scenario.sha256(),
        "seed": seed,
        "config": scenario.config(),
        "totals": totals(result),
    }


def correctness_warning(tot: dict[str, Any]) -> str | None:
    """The line a user must not miss when write protection silently failed."""
    if not tot["failed_maps"] and not tot["untracked_ppgtt_writes"]:
        return None
    errnos = ", ".join(f"-{k} x{v}" for k, v in tot["failed_map_errnos"].items()) or "none"
    return (
        f"WARNING: {tot['failed_maps']} PPGTT page maps failed ({errnos}); "
        f"{tot['untracked_ppgtt_writes']} guest page-table writes were NOT trapped, so "
        "the vGPU's shadow page tables went stale. This configuration is incorrect."
    )


def format_table(rows: list[dict[str, Any]], tot: dict[str, Any]) -> str:
    """A short human-readable table of a run (latencies in microseconds)."""
    head = f"{'access':<12} {'server':<16} {'count':>8} {'mean_us':>9} {'p50_us':>9} "
    head += f"{'p99_us':>9} {'max_us':>9} {'visits':>8} {'dm_util':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        util = "" if r["dm_util"] is None else f"{100 * r['dm_util']:.1f}%"
        lines.append(
            f"{r['access_type']:<12} {r['server']:<16} {r['count']:>8} "
            f"{r['mean_ns'] / 1e3:>9.2f} {r['p50_ns'] / 1e3:>9.2f} {r['p99_ns'] / 1e3:>9.2f} "
            f"{r['max_ns'] / 1e3:>9.2f} {r['mean_visits']:>8.1f} {util:>8}"
        )
    ranges = "; ".join(
        f"{g}: mean {v['mean']:.0f} max {v['max']:.0f}" for g, v in tot["ranges"].items()
    )
    lines.append("")
    lines.append(
        f"{tot['accesses']} accesses in {tot['measured_ns'] / 1e6:.2f} ms simulated "
        f"({tot['throughput_per_s']:.0f}/s); XenGT ranges {ranges}; "
        f"maps {tot['maps']} (failed {tot['failed_maps']}), "
        f"untracked PPGTT writes {tot['untracked_ppgtt_writes']}"
    )
    use = tot["cpu_use"]
    busiest = sorted(use["threads"].items(), key=lambda kv: -kv[1])[:4]
    threads = ", ".join(f"{name} {100 * v:.1f}%" for name, v in busiest)
    where = (
        f"{len(use['dom0_vcpus'])} shared dom0 vCPUs"
        if use["dom0_vcpus"]
        else ("a dom0 vCPU per thread")
    )
    lines.append(
        f"dom0 ({where}): mean {100 * use['dom0_mean']:.1f}%, "
        f"max {100 * use['dom0_max']:.1f}%, {use['dom0_busy_cpus']:.2f} CPUs busy; "
        f"busiest device-model threads: {threads}"
    )
    if use["pcpus"]:
        pcpus = ", ".join(f"{n} {100 * v:.1f}%" for n, v in use["pcpus"].items())
        lines.append(f"shared pCPUs: {pcpus}")
    if tot["lock_wait_per_trap_ns"]:
        lines.append(
            f"rangeset lock: traps waited {tot['lock_wait_per_trap_ns']:.1f} ns each on "
            "average for a map/unmap holding the write lock"
        )
    return "\n".join(lines)
