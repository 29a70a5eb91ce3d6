"""Proof that the simulator itself is right: closed forms, conservation laws, timelines.

* With fixed costs at 0 and exponential think and service times, N vCPUs that block
  until their reply, feeding one single-thread device model, are the machine-repairman
  model (finite-source M/M/1//N). Its mean response time has a closed form; so has the
  same model with K repairmen (dom0 vCPUs shared by the device models), and the one
  where the repairman is a physical CPU that runs the vCPUs' guest code.
* Little's law on the closed loop (the response-time law): N = X * (R + Z).
* Deterministic runs whose event times are checked by hand: the trap path step by step
  (tests/test_trap_path.py has the hand timelines of issue #12's additions).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from sim.model.scenario import Scenario, load_scenario
from sim.model.simulation import Simulation
from sim.model.summary import overall
from sim.xen.abi import RangeType

SMALL = Path(__file__).resolve().parent.parent / "scenarios" / "small"


def machine_repairman_response(
    n: int, think_ns: float, service_ns: float, servers: int = 1
) -> float:
    """Mean response time of M/M/K//N: R = N / X - Z, X = mu * E[busy servers].

    p_k is proportional to C(N, k) r^k for k <= K and to C(N, k) k! / (K! K^(k-K)) r^k
    above, with r = lambda / mu (the finite-source multi-server queue).
    """
    ratio = service_ns / think_ns  # lambda / mu
    weights = []
    for k in range(n + 1):
        w = math.comb(n, k) * ratio**k
        if k > servers:
            w *= math.factorial(k) / (math.factorial(servers) * servers ** (k - servers))
        weights.append(w)
    total = sum(weights)
    busy = sum(min(k, servers) * w for k, w in enumerate(weights)) / total
    throughput = busy / service_ns
    return n / throughput - think_ns


def _repairman(n: int, think_ns: float, service_ns: float) -> Scenario:
    return load_scenario(
        SMALL / "machine-repairman.yaml",
        [
            ("guests[0].vcpus", n),
            ("guests[0].think.mean_ns", think_ns),
            ("guests[0].vgpu.device_model.service.default.mean_ns", service_ns),
            ("duration_ms", 120),
            ("warmup_ms", 2),
        ],
    )


def _mean_over_seeds(scenario: Scenario, seeds: int = 5) -> tuple[float, float]:
    """Mean response over independent replications, and its standard error."""
    means = [
        overall(Simulation(scenario, seed=seed, base_dir=SMALL).run())["mean_ns"]
        for seed in range(seeds)
    ]
    return float(np.mean(means)), float(np.std(means, ddof=1) / math.sqrt(len(means)))


@pytest.mark.parametrize(
    ("n", "think_ns", "service_ns"),
    [
        (1, 30_000, 5_000),  # no queueing: R = S
        (4, 30_000, 5_000),  # moderate load
        (8, 20_000, 5_000),  # the device model is nearly saturated
    ],
)
def test_machine_repairman_mean_response(n: int, think_ns: float, service_ns: float) -> None:
    """Mean response time matches M/M/1//N within the run's statistical tolerance.

    Independent replications (seeds) give independent run means; their spread gives the
    standard error, and the closed form must lie within 4 standard errors. XenGT serves
    its vCPUs in index order, not FIFO: with exponential service and no preemption the
    order changes who waits, not the mean.
    """
    scenario = _repairman(n, think_ns, service_ns)
    expected = machine_repairman_response(n, think_ns, service_ns)
    mean, stderr = _mean_over_seeds(scenario)
    assert abs(mean - expected) <= 4 * stderr + 1e-9, (mean, expected, stderr)
    # And the tolerance is meaningful: a few percent of the value, not a free pass.
    assert stderr < 0.03 * expected


def test_machine_repairman_closed_form_sanity() -> None:
    """The closed form itself: one vCPU never queues, load raises response time, and
    enough repairmen remove the queue."""
    assert machine_repairman_response(1, 30_000, 5_000) == pytest.approx(5_000)
    assert machine_repairman_response(8, 20_000, 5_000) > machine_repairman_response(
        4, 20_000, 5_000
    )
    assert machine_repairman_response(6, 20_000, 5_000, servers=6) == pytest.approx(5_000)
    assert machine_repairman_response(6, 20_000, 5_000, servers=2) < (
        machine_repairman_response(6, 20_000, 5_000, servers=1)
    )


@pytest.mark.parametrize(("guests", "dom0_vcpus"), [(6, 2), (8, 3)])
def test_shared_dom0_vcpus_are_a_multi_server_repairman(guests: int, dom0_vcpus: int) -> None:
    """N single-vCPU guests whose device-model threads share K dom0 vCPUs: each guest's
    thread serves only its own vCPU, so the dom0 pool is the one queue, M/M/K//N."""
    think, service = 20_000.0, 8_000.0
    scenario = load_scenario(
        SMALL / "machine-repairman.yaml",
        [
            ("guests[0].vcpus", 1),
            ("guests[0].count", guests),
            ("guests[0].think.mean_ns", think),
            ("guests[0].vgpu.device_model.service.default.mean_ns", service),
            ("host.dom0_vcpus", dom0_vcpus),
            ("duration_ms", 120),
            ("warmup_ms", 2),
        ],
    )
    expected = machine_repairman_response(guests, think, service, servers=dom0_vcpus)
    mean, stderr = _mean_over_seeds(scenario)
    assert abs(mean - expected) <= 4 * stderr + 1e-9, (mean, expected, stderr)
    assert expected > service * 1.1  # there is queueing to get right


@pytest.mark.parametrize("n", [3, 5])
def test_shared_pcpu_runs_guest_code_one_vcpu_at_a_time(n: int) -> None:
    """N vCPUs pinned to one pCPU, with every Xen cost at 0 and a device model that never
    queues (one thread per vCPU... in effect: ``workers`` = N): the pCPU is the single
    server (its service is guest code, the think time) and the device model the delay
    Z. A trap's latency is Z plus the wait for the pCPU after the reply, so its mean is
    Z + (R - S) with R the M/M/1//N response time for think Z and service S."""
    guest_code, dm_delay = 10_000.0, 15_000.0
    scenario = load_scenario(
        SMALL / "machine-repairman.yaml",
        [
            ("guests[0].vcpus", n),
            ("guests[0].think.mean_ns", guest_code),
            ("guests[0].vgpu.device_model.workers", n),
            ("guests[0].vgpu.device_model.service.default.mean_ns", dm_delay),
            ("host.pcpus", 1),
            ("duration_ms", 150),
            ("warmup_ms", 2),
        ],
    )
    response = machine_repairman_response(n, dm_delay, guest_code)
    expected = dm_delay + (response - guest_code)
    mean, stderr = _mean_over_seeds(scenario)
    assert abs(mean - expected) <= 4 * stderr + 1e-9, (mean, expected, stderr)
    assert expected > dm_delay * 1.1


@pytest.mark.parametrize(("n", "think_ns"), [(2, 30_000), (6, 15_000)])
def test_littles_law_on_the_closed_loop(n: int, think_ns: float) -> None:
    """Response-time law (Little's law on the whole loop): N = X * (R + Z)."""
    scenario = _repairman(n, think_ns, 5_000)
    result = Simulation(scenario, seed=11, base_dir=SMALL).run()
    throughput = result.counters.accesses / result.measured_ns  # per ns
    response = overall(result)["mean_ns"]
    assert throughput * (response + think_ns) == pytest.approx(n, rel=0.02)


def trace_of(scenario: Scenario, fast_path: bool = True) -> tuple[list[dict], Simulation]:
    """Every trap of a run as a dict of its event times, and the simulation."""
    rows: list[dict] = []

    def keep(t: object) -> None:
        rows.append(
            {
                "vcpu": t.vcpu.name,  # type: ignore[attr-defined]
                "access": t.access,  # type: ignore[attr-defined]
                "kind": t.kind,  # type: ignore[attr-defined]
                "server": t.handler,  # type: ignore[attr-defined]
                "visits": t.visits,  # type: ignore[attr-defined]
                "trap": t.t_trap,  # type: ignore[attr-defined]
                "selected": t.t_selected,  # type: ignore[attr-defined]
                "served": t.t_served,  # type: ignore[attr-defined]
                "resumed": t.t_resumed,  # type: ignore[attr-defined]
            }
        )

    sim = Simulation(scenario, base_dir=SMALL, trace=keep, fast_path=fast_path)
    sim.run()
    return rows, sim


def test_exact_timeline_of_one_vcpu() -> None:
    """trap -> selected -> served -> resumed at hand-computed times (constant costs).

    selected = trap + vmexit + ept_violation + mmio_decode
               + 2 scans x 19 handlers x handler_check + visits x visit_ns
    served   = selected + ioreq_send + dm wake-up (idle thread) + service
    resumed  = served + vcpu_wake + mmio_decode (the completion re-emulates) + vmentry
    The BAR range sits above every page-table page, so Xen's list walk visits all N
    MEMORY nodes (rangeset.c find_range(): min(k + 1, N) with k = N).
    """
    scenario = load_scenario(SMALL / "timeline.yaml")
    rows, sim = trace_of(scenario)
    visits = len(sim.guests[0].xengt.rangesets[RangeType.MEMORY])
    assert visits >= 2  # the BAR plus page ranges below it
    assert len(rows) >= 5
    expected_trap = 10_000.0
    for row in rows:
        assert (row["kind"], row["server"], row["visits"]) == ("mmio", "vm1/xengt", visits)
        selected = expected_trap + 300 + 500 + 1000 + 2 * 19 * 2 + visits * 10
        served = selected + 400 + 2_000 + 3_000
        resumed = served + 700 + 1000 + 200
        assert (row["trap"], row["selected"], row["served"], row["resumed"]) == (
            expected_trap,
            selected,
            served,
            resumed,
        )
        expected_trap = resumed + 10_000


def test_timeline_of_port_io() -> None:
    """A port I/O exit: no EPT path, no instruction decode, one handler scan (only
    hvm_io_intercept), and on resume handle_pio() runs again (HVMIO_pio_completion).

    The scan walks all 19 of 4.6's handlers, except for stdvga's sequencer and graphics
    ports (0x3c4-0x3c5, 0x3ce-0x3cf: stdvga.c @4.6 lines 577-579), whose handlers, the
    7th and 8th entries, accept and decline: the walk stops there (sim.xen.intercept)."""
    scenario = load_scenario(
        SMALL / "timeline.yaml",
        [
            ("guests[0].mix", {"mmio": 0.0, "pio": 1.0, "ppgtt_write": 0.0, "other": 0.0}),
            ("duration_ms", 1),
        ],
    )
    rows, _ = trace_of(scenario)
    assert rows
    stdvga = {0x3C4: 7, 0x3C5: 7, 0x3CE: 8, 0x3CF: 8}
    assert {row["access"].addr in stdvga for row in rows} == {True, False}
    for row in rows:
        assert row["kind"] == "pio"
        checked = stdvga.get(row["access"].addr, 19)
        selected = row["trap"] + 300 + 100 + checked * 2 + row["visits"] * 10
        assert row["visits"] == 1  # the PORT rangeset holds one range
        assert row["selected"] == selected
        assert row["served"] == selected + 400 + 2_000 + 3_000
        assert row["resumed"] == row["served"] + 700 + 100 + 200


def test_timeline_p2m_ioreq_server_page_write() -> None:
    """Under p2m-ioreq-server a page-table write skips every rangeset: 0 visits, one p2m
    type query (emulate.c @master, hvmemul_do_io, line 211; ca2b511d3f); it is still an
    EPT violation emulated twice. The design runs on Xen 4.9, whose HVM domain has 18
    internal handlers (the MSI-X table handler only comes with an assigned device)."""
    scenario = load_scenario(
        SMALL / "timeline.yaml",
        [
            ("xen.design", "p2m-ioreq-server"),
            ("guests[0].mix", {"mmio": 0.0, "pio": 0.0, "ppgtt_write": 1.0, "other": 0.0}),
        ],
    )
    rows, _ = trace_of(scenario)
    assert rows
    for row in rows:
        assert (row["kind"], row["visits"]) == ("ppgtt_write", 0)
        selected = row["trap"] + 300 + 500 + 1000 + 2 * 18 * 2 + 50
        assert row["selected"] == selected
        assert row["resumed"] == selected + 400 + 5_000 + 700 + 1000 + 200


def test_fast_path_changes_no_event_time_only_the_event_count() -> None:
    """A pCPU with one vCPU, and a thread with a dom0 vCPU of its own, need no scheduler.
    Forcing every CPU through it must give the same event times; the fast path never
    needs more SimPy events (both fold the resume into the next think time)."""
    for name in ("timeline.yaml", "tiny.yaml"):
        scenario = load_scenario(SMALL / name, [("duration_ms", 3)])
        counts = {}
        traces = {}
        for fast in (True, False):
            sim = Simulation(scenario, base_dir=SMALL, fast_path=fast)
            rows: list[tuple] = []
            sim.recorder.trace = lambda t, rows=rows: rows.append(
                (t.vcpu.name, t.t_trap, t.t_selected, t.t_served, t.t_resumed)
            )
            scheduled = [0]
            schedule = sim.env.schedule

            def counting(*args, scheduled=scheduled, schedule=schedule, **kw):  # type: ignore[no-untyped-def]
                scheduled[0] += 1
                return schedule(*args, **kw)

            sim.env.schedule = counting  # type: ignore[method-assign]
            sim.run()
            traces[fast], counts[fast] = rows, scheduled[0]
        assert traces[True] == traces[False], name
        assert len(traces[True]) > 10
        assert counts[True] <= counts[False], (name, counts)
