"""Proof that the simulator itself is right: closed forms, conservation laws, timelines.

* With fixed costs at 0 and exponential think and service times, N vCPUs that block
  until their reply, feeding one single-thread device model, are the machine-repairman
  model (finite-source M/M/1//N). Its mean response time has a closed form.
* Little's law on the closed loop (the response-time law): N = X * (R + Z).
* A deterministic single-vCPU run whose event times are checked by hand.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from sim.model.runner import run_to_directory
from sim.model.scenario import Scenario, load_scenario
from sim.model.simulation import Simulation
from sim.model.summary import overall
from sim.xen.abi import RangeType

SMALL = Path(__file__).resolve().parent.parent / "scenarios" / "small"


def machine_repairman_response(n: int, think_ns: float, service_ns: float) -> float:
    """Mean response time of M/M/1//N: R = N / X - Z, X = mu * (1 - p0)."""
    ratio = service_ns / think_ns  # lambda / mu
    terms = [math.perm(n, k) * ratio**k for k in range(n + 1)]
    p0 = 1.0 / sum(terms)
    throughput = (1.0 - p0) / service_ns
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
    standard error, and the closed form must lie within 4 standard errors.
    """
    scenario = _repairman(n, think_ns, service_ns)
    expected = machine_repairman_response(n, think_ns, service_ns)
    means = []
    for seed in range(5):
        result = Simulation(scenario, seed=seed, base_dir=SMALL).run()
        means.append(overall(result)["mean_ns"])
    mean = float(np.mean(means))
    stderr = float(np.std(means, ddof=1) / math.sqrt(len(means)))
    assert abs(mean - expected) <= 4 * stderr + 1e-9, (mean, expected, stderr)
    # And the tolerance is meaningful: a few percent of the value, not a free pass.
    assert stderr < 0.03 * expected


def test_machine_repairman_closed_form_sanity() -> None:
    """The closed form itself: one vCPU never queues, and load raises response time."""
    assert machine_repairman_response(1, 30_000, 5_000) == pytest.approx(5_000)
    assert machine_repairman_response(8, 20_000, 5_000) > machine_repairman_response(
        4, 20_000, 5_000
    )


@pytest.mark.parametrize(("n", "think_ns"), [(2, 30_000), (6, 15_000)])
def test_littles_law_on_the_closed_loop(n: int, think_ns: float) -> None:
    """Response-time law (Little's law on the whole loop): N = X * (R + Z)."""
    scenario = _repairman(n, think_ns, 5_000)
    result = Simulation(scenario, seed=11, base_dir=SMALL).run()
    throughput = result.counters.accesses / result.measured_ns  # per ns
    response = overall(result)["mean_ns"]
    assert throughput * (response + think_ns) == pytest.approx(n, rel=0.02)


def test_exact_timeline_of_one_vcpu(tmp_path: Path) -> None:
    """trap -> selected -> served -> resumed at hand-computed times (constant costs).

    selected = trap + vmexit + mmio_decode + visits * visit_ns
    served   = selected + ioreq_send + dm wake-up (idle thread) + service
    resumed  = served + vcpu_wake + vmentry; the next trap follows after the think time.
    The BAR range sits above every page-table page, so Xen's list walk visits all N
    MEMORY nodes (rangeset.c find_range(): min(k + 1, N) with k = N).
    """
    scenario = load_scenario(SMALL / "timeline.yaml")
    sim = Simulation(scenario, base_dir=SMALL)
    memory_nodes = len(sim.guests[0].xengt.rangesets[RangeType.MEMORY])
    assert memory_nodes >= 2  # the BAR plus page ranges below it
    out = tmp_path / "run"
    run_to_directory(scenario, 1, out, base_dir=SMALL, scenario_file=None, trace=True)
    rows = list(csv.DictReader((out / "trace.csv").open()))
    assert len(rows) >= 5
    c = scenario.costs
    visits = memory_nodes
    expected_trap = 10_000.0
    for row in rows:
        assert row["kind"] == "mmio"
        assert row["server"] == "vm1/xengt"
        assert int(row["visits"]) == visits
        selected = expected_trap + c.vmexit_ns + c.mmio_decode_ns + visits * c.visit_ns
        served = selected + c.ioreq_send_ns + 2_000 + 3_000
        resumed = served + c.vcpu_wake_ns + c.vmentry_ns
        assert float(row["t_trap_ns"]) == expected_trap
        assert float(row["t_selected_ns"]) == selected
        assert float(row["t_served_ns"]) == served
        assert float(row["t_resumed_ns"]) == resumed
        expected_trap = resumed + 10_000


def test_timeline_p2m_ioreq_server_page_write(tmp_path: Path) -> None:
    """Under p2m-ioreq-server a page-table write skips every rangeset: 0 visits, one p2m
    type query (emulate.c @master, hvmemul_do_io, line 211; ca2b511d3f)."""
    scenario = load_scenario(
        SMALL / "timeline.yaml",
        [
            ("xen.design", "p2m-ioreq-server"),
            ("guests[0].mix", {"mmio": 0.0, "pio": 0.0, "ppgtt_write": 1.0, "other": 0.0}),
        ],
    )
    out = tmp_path / "run"
    run_to_directory(scenario, 1, out, base_dir=SMALL, scenario_file=None, trace=True)
    rows = list(csv.DictReader((out / "trace.csv").open()))
    c = scenario.costs
    for row in rows:
        assert row["kind"] == "ppgtt_write"
        assert int(row["visits"]) == 0
        t_trap = float(row["t_trap_ns"])
        selected = t_trap + c.vmexit_ns + c.mmio_decode_ns + c.p2m_lookup_ns
        assert float(row["t_selected_ns"]) == selected
        assert float(row["t_resumed_ns"]) == selected + c.ioreq_send_ns + 5_000 + 900


def test_shared_pcpu_queues_exits_and_resumes(tmp_path: Path) -> None:
    """Two vCPUs pinned to one pCPU, trapping at the same instant: Xen handles the
    second exit only after the first (one pCPU does one thing at a time), and the
    device model's single thread serves the queued second ioreq without a new wake-up.

    vCPU0: exit [10000, 10000 + X), DM wake 2000 + service 3000, resume W.
    vCPU1: exit [10000 + X, 10000 + 2X), waits for the DM thread, service 3000, resume W.
    with X = vmexit + decode + visits * visit_ns + ioreq_send and W = wake + entry.
    """
    scenario = load_scenario(SMALL / "timeline.yaml", [("host.pcpus", 1), ("guests[0].vcpus", 2)])
    sim = Simulation(scenario, base_dir=SMALL)
    assert [p.dedicated for p in sim.pcpus] == [False]
    visits = len(sim.guests[0].xengt.rangesets[RangeType.MEMORY])
    out = tmp_path / "run"
    run_to_directory(scenario, 1, out, base_dir=SMALL, scenario_file=None, trace=True)
    rows: dict[str, dict[str, str]] = {}
    for r in csv.DictReader((out / "trace.csv").open()):
        rows.setdefault(r["vcpu"], r)  # each vCPU's first trap
    c = scenario.costs
    x = c.vmexit_ns + c.mmio_decode_ns + visits * c.visit_ns + c.ioreq_send_ns
    w = c.vcpu_wake_ns + c.vmentry_ns
    first, second = rows["vm1/vcpu0"], rows["vm1/vcpu1"]
    assert float(first["t_trap_ns"]) == float(second["t_trap_ns"]) == 10_000.0
    assert float(first["t_selected_ns"]) == 10_000 + x - c.ioreq_send_ns
    assert float(second["t_selected_ns"]) == 10_000 + 2 * x - c.ioreq_send_ns
    served0 = 10_000 + x + 2_000 + 3_000
    assert float(first["t_served_ns"]) == served0
    assert float(first["t_resumed_ns"]) == served0 + w
    served1 = served0 + 3_000  # queued behind vCPU0's ioreq: no wake-up
    assert float(second["t_served_ns"]) == served1
    assert float(second["t_resumed_ns"]) == served1 + w
